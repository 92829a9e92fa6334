// Package spool is a bounded, crash-safe, on-disk FIFO of opaque records.
//
// The proxy spools encoded call events here while the event stream is
// unreachable and sends them, oldest first, once it is back.
//
// # Layout
//
// A spool directory holds:
//
//   - segment files, NNNNNNNNNNNNNNNN.seg (16 hex digits, increasing), written
//     append-only. A record is an 8-byte header — little-endian uint32 length,
//     then little-endian uint32 CRC-32C over the 4 length bytes and the payload —
//     followed by the payload. Empty records are not allowed, so zero-filled
//     space left by a crash never parses as a record.
//   - "cursor": the read position (segment, offset) of the oldest unacknowledged
//     record, kept in two alternating 32-byte slots, each with a generation
//     number and a CRC, so a torn cursor write falls back to the previous one.
//   - "LOCK": held with flock(2) while the spool is open, so two processes never
//     share a directory.
//
// Segments are reclaimed (deleted) as soon as the cursor moves past them, and
// when the spool drains completely it starts over with a fresh, empty segment.
//
// # Limit
//
// MaxBytes bounds the bytes on disk: the sum of all segment files, including
// the consumed part of the oldest segment that is not reclaimed yet. An Append
// that would exceed it fails with ErrFull; nothing is ever dropped silently.
// SegmentBytes (default MaxBytes/8) bounds that consumed-but-not-reclaimed slack.
//
// # Durability (fsync policy)
//
//   - Append writes the whole record with one write(2). With SyncAlways (the
//     default) it also fsyncs the segment before returning, so an accepted
//     record survives a power loss. With SyncManual it does not: the record
//     survives a process crash (it is in the page cache) and becomes
//     power-loss-safe at the next Sync or Close; callers batch appends and call
//     Sync once per batch (group commit).
//   - A segment is fsynced when it is closed for writing (rotation) and the
//     directory is fsynced when a segment is created, in both policies.
//   - Ack (AckN for a batch) moves the cursor with one pwrite(2) and no
//     fsync; Sync and Close fsync it. After a process crash the cursor is
//     exact. After a power loss the cursor may be older than the last Ack, so
//     records are delivered at least once: consumers deduplicate (the proxy's
//     events carry unique ids that JetStream deduplicates).
//
// # Recovery
//
// Open scans every segment and verifies each record's length and CRC. At the
// first record that is incomplete or does not verify — a torn write from a
// crash — the segment is truncated there and the loss is logged and counted in
// Stats; Open never panics on damaged files. A cursor pointing at a segment
// that no longer exists, or past the end of its segment, is clamped to the
// oldest data that remains.
//
// A Spool is safe for concurrent use; Peek, PeekN, Ack and AckN are meant
// for a single consumer.
package spool

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/callpipe/callpipe/internal/defaults"
)

// Errors returned by a Spool.
var (
	// ErrFull means the record does not fit under MaxBytes now; it may fit once
	// older records are acknowledged.
	ErrFull = errors.New("spool: full")
	// ErrTooLarge means the record can never fit under MaxBytes.
	ErrTooLarge = errors.New("spool: record larger than the spool")
	// ErrEmpty is returned by Peek when there is no unacknowledged record.
	ErrEmpty = errors.New("spool: empty")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("spool: closed")
	// ErrNothingPeeked is returned by Ack without a preceding successful Peek.
	ErrNothingPeeked = errors.New("spool: ack without peek")
	// ErrLocked is returned by Open when another Spool holds the directory.
	ErrLocked = errors.New("spool: directory in use")
)

// SyncPolicy selects when appended records are fsynced.
type SyncPolicy int

const (
	// SyncAlways fsyncs every Append before it returns.
	SyncAlways SyncPolicy = iota
	// SyncManual leaves fsync to Sync and Close (and segment rotation).
	SyncManual
)

// Options configure a Spool.
type Options struct {
	// MaxBytes bounds the spool's size on disk. Required (> 0).
	MaxBytes int64
	// SegmentBytes is the size after which a segment is closed and a new one
	// started. Default MaxBytes/8, at least 4 KiB and at most 64 MiB.
	SegmentBytes int64
	// Sync is the fsync policy; the zero value is SyncAlways.
	Sync SyncPolicy
	// Logger receives recovery and corruption warnings. Default slog.Default().
	Logger *slog.Logger
}

// Stats describe a spool.
type Stats struct {
	Records  int64 // unacknowledged records
	Bytes    int64 // bytes on disk (what MaxBytes bounds)
	Segments int
	// TruncatedBytes were cut from segment tails at Open (torn writes).
	TruncatedBytes int64
	// SkippedBytes were unreadable at run time and skipped.
	SkippedBytes int64
}

const (
	headerSize  = 8
	slotSize    = 32
	segSuffix   = ".seg"
	cursorName  = "cursor"
	lockName    = "LOCK"
	maxRecord   = 1<<31 - 1
	minSegBytes = 4 << 10
	maxSegBytes = 64 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type segment struct {
	seq  uint64
	size int64
}

// Spool is an on-disk FIFO. Create one with Open.
type Spool struct {
	dir  string
	opts Options
	log  *slog.Logger

	mu     sync.Mutex
	closed bool
	lock   *os.File

	segs  []segment // live segments, oldest first; the last one is written
	w     *os.File  // last segment, for writing
	total int64     // sum of segment sizes

	// The cursor: the oldest unacknowledged record is at (segs[0], rOff).
	rOff int64
	r    *os.File // segs[0], for reading
	rSeq uint64   // which segment r is open on
	// peekEnds: the offsets just past each record the last Peek or PeekN
	// returned, in the oldest segment; empty when nothing is peeked
	peekEnds []int64
	count    int64

	cur   *os.File
	gen   uint64
	stats Stats
}

// Open opens (creating if needed) the spool in dir and recovers it.
func Open(dir string, o Options) (*Spool, error) {
	if o.MaxBytes <= 0 {
		return nil, errors.New("spool: MaxBytes must be positive")
	}
	o.SegmentBytes = defaults.IfNotPositive(o.SegmentBytes, min(max(o.MaxBytes/8, minSegBytes), maxSegBytes))
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	s := &Spool{dir: dir, opts: o, log: o.Logger.With("spool", dir)}
	lf, err := os.OpenFile(filepath.Join(dir, lockName), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	if err := lockFile(lf); err != nil {
		lf.Close()
		return nil, fmt.Errorf("%w: %s: %v", ErrLocked, dir, err)
	}
	s.lock = lf
	if err := s.recover(); err != nil {
		s.closeFiles()
		return nil, err
	}
	return s, nil
}

func (s *Spool) segPath(seq uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%016x%s", seq, segSuffix))
}

func (s *Spool) recover() error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() || !strings.HasSuffix(name, segSuffix) {
			continue
		}
		seq, err := strconv.ParseUint(strings.TrimSuffix(name, segSuffix), 16, 64)
		if err != nil || len(name) != 16+len(segSuffix) {
			continue
		}
		s.segs = append(s.segs, segment{seq: seq})
	}
	slices.SortFunc(s.segs, func(a, b segment) int {
		switch {
		case a.seq < b.seq:
			return -1
		case a.seq > b.seq:
			return 1
		}
		return 0
	})

	s.cur, err = os.OpenFile(filepath.Join(s.dir, cursorName), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	cseq, coff, ok := s.readCursor()
	next := uint64(1) // sequence numbers never go backwards
	if ok {
		next = cseq + 1
	}
	if n := len(s.segs); n > 0 {
		next = max(next, s.segs[n-1].seq+1)
	}

	// Segments before the cursor's are consumed; a crash may have kept them.
	if ok {
		for len(s.segs) > 0 && s.segs[0].seq < cseq {
			if err := os.Remove(s.segPath(s.segs[0].seq)); err != nil {
				return fmt.Errorf("spool: reclaim: %w", err)
			}
			s.segs = s.segs[1:]
		}
		if len(s.segs) == 0 || s.segs[0].seq != cseq {
			coff = 0 // the cursor's segment is gone: start at the oldest that is left
		}
	} else {
		coff = 0
	}

	for i := range s.segs {
		seg := &s.segs[i]
		from := int64(-1)
		if i == 0 {
			from = coff
		}
		size, valid, records, next, err := s.scan(seg.seq, from)
		if err != nil {
			return err
		}
		if valid < size {
			s.log.Warn("spool: truncating torn or corrupt segment tail",
				"segment", filepath.Base(s.segPath(seg.seq)), "offset", valid, "lost_bytes", size-valid)
			if err := os.Truncate(s.segPath(seg.seq), valid); err != nil {
				return fmt.Errorf("spool: truncate torn tail: %w", err)
			}
			s.stats.TruncatedBytes += size - valid
		}
		seg.size = valid
		s.total += valid
		s.count += records
		if i == 0 {
			s.rOff = next
		}
	}

	if s.count == 0 {
		// Nothing to deliver: start over with a fresh segment.
		for _, seg := range s.segs {
			if err := os.Remove(s.segPath(seg.seq)); err != nil {
				return fmt.Errorf("spool: reclaim: %w", err)
			}
		}
		s.segs, s.total, s.rOff = nil, 0, 0
		if err := s.newSegment(next); err != nil {
			return err
		}
		return s.writeCursor()
	}
	last := &s.segs[len(s.segs)-1]
	s.w, err = os.OpenFile(s.segPath(last.seq), os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	return s.writeCursor()
}

// scan validates the records of a segment. from is the cursor offset in this
// segment, or -1 if the cursor is elsewhere (then every record counts). It
// returns the file size, the length of its valid prefix, how many records
// start at or after the cursor, and the cursor rounded to a record boundary.
func (s *Spool) scan(seq uint64, from int64) (size, valid, records, next int64, err error) {
	f, err := os.Open(s.segPath(seq))
	if err != nil {
		return 0, 0, 0, 0, fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, 0, 0, fmt.Errorf("spool: %w", err)
	}
	size = fi.Size()
	br := bufio.NewReaderSize(f, 256<<10)
	var hdr [headerSize]byte
	var payload []byte
	next = -1
	for {
		if from >= 0 && next < 0 && valid >= from {
			next = valid
		}
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			break
		}
		n := int64(binary.LittleEndian.Uint32(hdr[0:4]))
		if n == 0 || n > s.maxRecord() || valid+headerSize+n > size {
			break
		}
		payload = slices.Grow(payload[:0], int(n))[:n]
		if _, err := io.ReadFull(br, payload); err != nil {
			break
		}
		if checksum(hdr[0:4], payload) != binary.LittleEndian.Uint32(hdr[4:8]) {
			break
		}
		if from < 0 || valid >= from {
			records++
		}
		valid += headerSize + n
	}
	if next < 0 {
		next = valid
	}
	if from < 0 {
		next = 0
	}
	return size, valid, records, next, nil
}

func (s *Spool) maxRecord() int64 { return min(s.opts.MaxBytes-headerSize, maxRecord) }

func checksum(lenBytes, payload []byte) uint32 {
	return crc32.Update(crc32.Checksum(lenBytes, castagnoli), castagnoli, payload)
}

// readCursor returns the newest valid cursor slot.
func (s *Spool) readCursor() (seq uint64, off int64, ok bool) {
	var b [2 * slotSize]byte
	n, _ := s.cur.ReadAt(b[:], 0)
	var bestGen uint64
	for i := 0; i+slotSize <= n; i += slotSize {
		slot := b[i : i+slotSize]
		if crc32.Checksum(slot[:24], castagnoli) != binary.LittleEndian.Uint32(slot[24:28]) {
			continue
		}
		gen := binary.LittleEndian.Uint64(slot[0:8])
		if gen == 0 || (ok && gen <= bestGen) {
			continue
		}
		bestGen, ok = gen, true
		seq = binary.LittleEndian.Uint64(slot[8:16])
		off = int64(binary.LittleEndian.Uint64(slot[16:24]))
	}
	s.gen = bestGen
	if off < 0 {
		off = 0
	}
	return seq, off, ok
}

// writeCursor records the cursor in the slot not holding the newest one.
func (s *Spool) writeCursor() error {
	s.gen++
	var b [slotSize]byte
	binary.LittleEndian.PutUint64(b[0:8], s.gen)
	binary.LittleEndian.PutUint64(b[8:16], s.segs[0].seq)
	binary.LittleEndian.PutUint64(b[16:24], uint64(s.rOff))
	binary.LittleEndian.PutUint32(b[24:28], crc32.Checksum(b[:24], castagnoli))
	if _, err := s.cur.WriteAt(b[:], int64(s.gen%2)*slotSize); err != nil {
		return fmt.Errorf("spool: write cursor: %w", err)
	}
	return nil
}

// newSegment creates an empty segment and makes it the one written.
func (s *Spool) newSegment(seq uint64) error {
	f, err := os.OpenFile(s.segPath(seq), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("spool: new segment: %w", err)
	}
	if err := syncDir(s.dir); err != nil {
		f.Close()
		return err
	}
	if s.w != nil {
		s.w.Close()
	}
	s.w = f
	s.segs = append(s.segs, segment{seq: seq})
	return nil
}

// rotate closes the written segment durably and starts the next one.
func (s *Spool) rotate() error {
	if err := s.w.Sync(); err != nil {
		return fmt.Errorf("spool: sync segment: %w", err)
	}
	return s.newSegment(s.segs[len(s.segs)-1].seq + 1)
}

// Append adds rec at the tail. It fails with ErrFull if rec does not fit
// under MaxBytes now, and with ErrTooLarge if it never can.
func (s *Spool) Append(rec []byte) error {
	if len(rec) == 0 {
		return errors.New("spool: empty record")
	}
	if int64(len(rec)) > s.maxRecord() {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(rec), s.opts.MaxBytes)
	}
	need := int64(headerSize + len(rec))
	buf := make([]byte, need)
	binary.LittleEndian.PutUint32(buf[0:4], uint32(len(rec)))
	copy(buf[headerSize:], rec)
	binary.LittleEndian.PutUint32(buf[4:8], checksum(buf[0:4], rec))

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.total+need > s.opts.MaxBytes {
		return fmt.Errorf("%w: %d of %d bytes used, record needs %d", ErrFull, s.total, s.opts.MaxBytes, need)
	}
	last := &s.segs[len(s.segs)-1]
	if _, err := s.w.WriteAt(buf, last.size); err != nil {
		// Cut the partial record so the segment stays parseable; if even that
		// fails, leave the damaged segment behind for good.
		if terr := s.w.Truncate(last.size); terr != nil {
			if rerr := s.rotate(); rerr != nil {
				s.log.Error("spool: cannot recover from failed write", "err", err, "truncate", terr, "rotate", rerr)
			}
		}
		return fmt.Errorf("spool: append: %w", err)
	}
	last.size += need
	s.total += need
	s.count++
	var syncErr error
	if s.opts.Sync == SyncAlways {
		if err := s.w.Sync(); err != nil {
			syncErr = fmt.Errorf("spool: sync: %w", err)
		}
	}
	if last.size >= s.opts.SegmentBytes {
		if err := s.rotate(); err != nil && syncErr == nil {
			syncErr = err
		}
	}
	return syncErr
}

// Sync makes every appended record and the cursor durable.
func (s *Spool) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	return s.syncLocked()
}

func (s *Spool) syncLocked() error {
	if err := s.w.Sync(); err != nil {
		return fmt.Errorf("spool: sync: %w", err)
	}
	if err := s.cur.Sync(); err != nil {
		return fmt.Errorf("spool: sync cursor: %w", err)
	}
	return nil
}

// Peek returns a copy of the oldest unacknowledged record, or ErrEmpty.
// Calling Peek again without Ack returns the same record.
func (s *Spool) Peek() ([]byte, error) {
	recs, err := s.PeekN(1)
	if err != nil {
		return nil, err
	}
	return recs[0], nil
}

// PeekN returns copies of up to n of the oldest unacknowledged records, in
// order (at least one), or ErrEmpty. They come from one segment: fewer than
// n when the oldest segment ends first, or when a record after the first
// does not read (a later call meets it first and skips it). Calling Peek or
// PeekN again without an Ack returns the same records first; AckN(k)
// acknowledges the first k.
func (s *Spool) PeekN(n int) ([][]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	for {
		head := s.segs[0]
		if s.rOff >= head.size {
			if len(s.segs) == 1 {
				s.peekEnds = s.peekEnds[:0]
				return nil, ErrEmpty
			}
			if err := s.dropHead(); err != nil {
				return nil, err
			}
			continue
		}
		rec, err := s.readRecord(head, s.rOff)
		if err != nil {
			// Unreadable at run time (disk error or outside damage): skip the
			// rest of this segment rather than wedge the consumer.
			lost := head.size - s.rOff
			s.log.Warn("spool: skipping unreadable segment tail",
				"segment", filepath.Base(s.segPath(head.seq)), "offset", s.rOff, "lost_bytes", lost, "err", err)
			s.stats.SkippedBytes += lost
			s.count = max(s.count-1, 0)
			if len(s.segs) == 1 {
				if err := s.rotate(); err != nil {
					return nil, err
				}
			}
			if err := s.dropHead(); err != nil {
				return nil, err
			}
			continue
		}
		recs := [][]byte{rec}
		end := s.rOff + headerSize + int64(len(rec))
		s.peekEnds = append(s.peekEnds[:0], end)
		for len(recs) < n && end < head.size {
			rec, err := s.readRecord(head, end)
			if err != nil {
				break
			}
			recs = append(recs, rec)
			end += headerSize + int64(len(rec))
			s.peekEnds = append(s.peekEnds, end)
		}
		return recs, nil
	}
}

// readRecord reads the record at offset off of segment head.
func (s *Spool) readRecord(head segment, off int64) ([]byte, error) {
	if s.r == nil || s.rSeq != head.seq {
		if s.r != nil {
			s.r.Close()
			s.r = nil
		}
		f, err := os.Open(s.segPath(head.seq))
		if err != nil {
			return nil, err
		}
		s.r, s.rSeq = f, head.seq
	}
	var hdr [headerSize]byte
	if _, err := s.r.ReadAt(hdr[:], off); err != nil {
		return nil, err
	}
	n := int64(binary.LittleEndian.Uint32(hdr[0:4]))
	if n == 0 || n > s.maxRecord() || off+headerSize+n > head.size {
		return nil, fmt.Errorf("bad record length %d", n)
	}
	rec := make([]byte, n)
	if _, err := s.r.ReadAt(rec, off+headerSize); err != nil {
		return nil, err
	}
	if checksum(hdr[0:4], rec) != binary.LittleEndian.Uint32(hdr[4:8]) {
		return nil, errors.New("checksum mismatch")
	}
	return rec, nil
}

// dropHead deletes the oldest segment, which the cursor has passed.
func (s *Spool) dropHead() error {
	head := s.segs[0]
	if s.r != nil && s.rSeq == head.seq {
		s.r.Close()
		s.r = nil
	}
	s.segs = s.segs[1:]
	s.rOff = 0
	s.total -= head.size
	// Move the cursor first: a crash between the two leaves a consumed
	// segment that Open removes, never a cursor into a missing one.
	if err := s.writeCursor(); err != nil {
		return err
	}
	if err := os.Remove(s.segPath(head.seq)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("spool: reclaim: %w", err)
	}
	return nil
}

// Ack removes the record returned by the last Peek (the first of PeekN).
func (s *Spool) Ack() error { return s.AckN(1) }

// AckN removes the first k records the last PeekN returned (k of at most as
// many), moving the cursor once.
func (s *Spool) AckN(k int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if len(s.peekEnds) == 0 {
		return ErrNothingPeeked
	}
	if k < 1 || k > len(s.peekEnds) {
		return fmt.Errorf("spool: ack %d records of %d peeked", k, len(s.peekEnds))
	}
	s.rOff = s.peekEnds[k-1]
	s.peekEnds = s.peekEnds[:0]
	s.count = max(s.count-int64(k), 0)
	if s.rOff < s.segs[0].size {
		return s.writeCursor()
	}
	if len(s.segs) > 1 {
		return s.dropHead()
	}
	// Drained completely: start over so that the disk space comes back.
	if err := s.newSegment(s.segs[0].seq + 1); err != nil {
		return err
	}
	return s.dropHead()
}

// Len is the number of unacknowledged records.
func (s *Spool) Len() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

// Size is the spool's size on disk, the quantity MaxBytes bounds.
func (s *Spool) Size() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// Stats returns the spool's counters.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Records, st.Bytes, st.Segments = s.count, s.total, len(s.segs)
	return st
}

// Close syncs and closes the spool. Later calls return ErrClosed.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	err := s.syncLocked()
	s.closed = true
	s.closeFiles()
	return err
}

func (s *Spool) closeFiles() {
	for _, f := range []*os.File{s.w, s.r, s.cur} {
		if f != nil {
			f.Close()
		}
	}
	if s.lock != nil {
		unlockFile(s.lock)
		s.lock.Close()
	}
	s.w, s.r, s.cur, s.lock = nil, nil, nil, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("spool: sync dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("spool: sync dir: %w", err)
	}
	return nil
}
