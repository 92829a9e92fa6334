package export

import (
	"bufio"
	"encoding/csv"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/parquet-go/parquet-go"
	pqcompress "github.com/parquet-go/parquet-go/compress"
)

// record is what an encoder writes: a Row (normalized call) or a RawRow
// (archived event).
type record[T any] interface {
	*T
	size() int
	appendJSON([]byte) ([]byte, error)
	csvRecord([]string) []string
}

// encoder writes rows of one part in one format.
type encoder[T any] interface {
	write(rows []T) error
	// close flushes everything (footer, compressor) into the output.
	close() error
}

// rowGroupBytes bounds the rows a Parquet writer buffers before it writes
// a row group (its memory).
const rowGroupBytes = 64 << 20

// extension is the object suffix of a part.
func extension(format, compression string) string {
	switch format {
	case FormatParquet:
		return ".parquet"
	case FormatCSV, FormatNDJSON:
		ext := "." + format
		switch compression {
		case "zstd":
			ext += ".zst"
		case "gzip":
			ext += ".gz"
		}
		return ext
	}
	return ""
}

func contentType(format string) string {
	switch format {
	case FormatParquet:
		return "application/vnd.apache.parquet"
	case FormatCSV:
		return "text/csv; charset=utf-8"
	}
	return "application/x-ndjson"
}

func newEncoder[T any, P record[T]](format, compression string, header []string, w io.Writer) (encoder[T], error) {
	if format == FormatParquet {
		var codec pqcompress.Codec
		switch compression {
		case "zstd":
			codec = &parquet.Zstd
		case "gzip":
			codec = &parquet.Gzip
		default:
			codec = &parquet.Uncompressed
		}
		return &parquetEncoder[T, P]{w: parquet.NewGenericWriter[T](w, parquet.Compression(codec), parquet.CreatedBy("callpipe", "", ""))}, nil
	}
	var comp io.WriteCloser
	switch compression {
	case "zstd":
		zw, err := zstd.NewWriter(w, zstd.WithEncoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		comp = zw
	case "gzip":
		comp = gzip.NewWriter(w)
	default:
		comp = nopCloser{w}
	}
	bw := bufio.NewWriterSize(comp, 256<<10)
	switch format {
	case FormatCSV:
		e := &csvEncoder[T, P]{comp: comp, bw: bw, cw: csv.NewWriter(bw)}
		if header != nil {
			if err := e.cw.Write(header); err != nil {
				return nil, err
			}
		}
		return e, nil
	case FormatNDJSON:
		return &ndjsonEncoder[T, P]{comp: comp, bw: bw}, nil
	}
	return nil, fmt.Errorf("export: unknown format %q", format)
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

type parquetEncoder[T any, P record[T]] struct {
	w        *parquet.GenericWriter[T]
	buffered int
}

func (e *parquetEncoder[T, P]) write(rows []T) error {
	if _, err := e.w.Write(rows); err != nil {
		return fmt.Errorf("parquet write: %w", err)
	}
	for i := range rows {
		e.buffered += P(&rows[i]).size()
	}
	if e.buffered >= rowGroupBytes {
		e.buffered = 0
		if err := e.w.Flush(); err != nil {
			return fmt.Errorf("parquet row group: %w", err)
		}
	}
	return nil
}

func (e *parquetEncoder[T, P]) close() error {
	if err := e.w.Close(); err != nil {
		return fmt.Errorf("parquet close: %w", err)
	}
	return nil
}

type csvEncoder[T any, P record[T]] struct {
	comp io.WriteCloser
	bw   *bufio.Writer
	cw   *csv.Writer
	rec  []string
}

func (e *csvEncoder[T, P]) write(rows []T) error {
	for i := range rows {
		e.rec = P(&rows[i]).csvRecord(e.rec)
		if err := e.cw.Write(e.rec); err != nil {
			return fmt.Errorf("csv write: %w", err)
		}
	}
	return nil
}

func (e *csvEncoder[T, P]) close() error {
	e.cw.Flush()
	if err := e.cw.Error(); err != nil {
		return fmt.Errorf("csv flush: %w", err)
	}
	if err := e.bw.Flush(); err != nil {
		return err
	}
	return e.comp.Close()
}

type ndjsonEncoder[T any, P record[T]] struct {
	comp io.WriteCloser
	bw   *bufio.Writer
	buf  []byte
}

func (e *ndjsonEncoder[T, P]) write(rows []T) error {
	for i := range rows {
		var err error
		e.buf, err = P(&rows[i]).appendJSON(e.buf[:0])
		if err != nil {
			return fmt.Errorf("ndjson encode: %w", err)
		}
		e.buf = append(e.buf, '\n')
		if _, err := e.bw.Write(e.buf); err != nil {
			return err
		}
	}
	return nil
}

func (e *ndjsonEncoder[T, P]) close() error {
	if err := e.bw.Flush(); err != nil {
		return err
	}
	return e.comp.Close()
}
