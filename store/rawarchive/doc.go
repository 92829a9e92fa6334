// Package rawarchive is the format of the raw call archive in S3/MinIO: its
// key scheme, its data objects and manifests, and the primitives that write
// and read them. The archive sink (sinks/archive) writes objects with it under
// its exactly-once commit protocol; replay and export read them with it, so
// neither depends on the sink.
//
// # Layout
//
//	<prefix>/dt=2026-11-26/hh=20/<first-seq>-<last-seq>.ndjson.zst      the data object
//	<prefix>/dt=2026-11-26/hh=20/<first-seq>-<last-seq>.manifest.json   its manifest
//
// first-seq and last-seq are the smallest and largest CALLPIPE_CALLS stream
// sequence in the object, zero-padded to 20 digits so that keys sort in
// sequence order. One line of a data object is one message exactly as it was
// stored in the stream. Objects carry their count, start-time range, byte size
// and SHA-256 (of the uncompressed NDJSON) as user metadata; the manifest
// repeats them and lists the stream sequences of the lines, in line order.
//
// # Invariants
//
//   - A data object's key is derived from its hour and its first and last
//     stream sequence only, so an upload retried after a crash overwrites the
//     same key with the same bytes.
//   - A line is one message as it was stored in the stream (StorableLine only
//     compacts JSON spread over several lines), so a replayed line is the
//     event that was received.
//   - Readers list data objects only (Keys); a manifest whose object is not
//     uploaded yet is invisible to them.
package rawarchive
