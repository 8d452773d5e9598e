package msbagent

/*
#include <stdlib.h>
#include <microsandbox_agent.h>
*/
import "C"

import (
	"context"
	"io/fs"
	"sync"
	"sync/atomic"
	"unsafe"
)

// writePiece is the most one library write is handed: it bounds the C copy
// each write makes and the data a single timeout has to cover.
const writePiece = 1 << 20

var errReaderClosed = &Error{Code: StatusClosed, Message: "the file reader is closed"}

var errWriterClosed = &Error{Code: StatusClosed, Message: "the file writer is closed"}

// FileReader reads a guest file as it arrives, holding at most one chunk
// (a few MiB) of it in memory. It implements io.ReadCloser; Read returns
// io.EOF once the whole file was read and the guest confirmed it. Created
// by Client.Open.
//
// Waiting for data is done on Go's network poller, as for processes. Read
// may be called from one goroutine at a time; Close from any.
type FileReader struct {
	ctx  context.Context
	path string

	// handleMu is held shared for every library call on handle and
	// exclusively to free it; handle is nil once released.
	handleMu    sync.RWMutex
	handle      *C.msb_file_reader
	readiness   *readinessWaiter
	releaseOnce sync.Once
	// released is closed once the handle has been freed; it stops the
	// goroutine watching ctx.
	released chan struct{}
	closed   atomic.Bool

	mu     sync.Mutex // serialises Read; guards chunk and endErr
	chunk  []byte     // the unread rest of the last chunk pulled
	endErr error      // io.EOF, or the failure that ended the stream
}

// Open starts reading a guest file. ctx governs the reader's whole life:
// once ctx is done, Read returns ctx.Err() and the rest of the file is
// abandoned. A missing or unreadable file is reported as an *fs.PathError
// matching ErrGuest (and fs.ErrNotExist, ...): by Open on sandboxes with
// handle-based files (generation 2+), which open the file first, and by
// the first Read on older ones. Close the reader to release it.
//
// On generation 2+ opening is a request the guest answers with a handle:
// it is sent once and waited for until ctx's deadline (60 s without one),
// since a repeat would leave handles open in the guest; a cancellation is
// seen before it is sent and once it is answered.
func (c *Client) Open(ctx context.Context, name string) (*FileReader, error) {
	if err := checkString("path", name); err != nil {
		return nil, err
	}
	var r *FileReader
	op := func(h *C.msb_client, timeout C.int64_t) error {
		cPath := C.CString(name)
		defer C.free(unsafe.Pointer(cPath))
		var reader *C.msb_file_reader
		var libErr *C.msb_error
		if status := C.msb_file_reader_open(h, cPath, timeout, &reader, &libErr); status != C.MSB_OK {
			return statusError(status, libErr)
		}
		var err error
		r, err = newFileReader(ctx, name, reader)
		if err != nil {
			C.msb_file_reader_free(reader)
		}
		return err
	}
	// Once ctx ends nobody will read the rest of the file.
	release := func() { r.release() }
	if err := c.openBound(ctx, op, release, func() <-chan struct{} { return r.released }); err != nil {
		return nil, pathError("open", name, err)
	}
	return r, nil
}

func newFileReader(ctx context.Context, name string, reader *C.msb_file_reader) (*FileReader, error) {
	readiness, err := readinessOf("msb-file-reader-readiness", func(fd *C.int, errOut **C.msb_error) C.msb_status {
		return C.msb_file_reader_readiness_fd(reader, fd, errOut)
	})
	if err != nil {
		return nil, err
	}
	return &FileReader{
		ctx:       ctx,
		path:      name,
		handle:    reader,
		readiness: readiness,
		released:  make(chan struct{}),
	}, nil
}

// release frees the handle, first waking a Read waiting on the poller,
// which then finds the handle gone.
func (r *FileReader) release() {
	r.releaseOnce.Do(func() {
		r.readiness.interrupt()
		r.handleMu.Lock()
		C.msb_file_reader_free(r.handle)
		r.handle = nil
		r.handleMu.Unlock()
		r.readiness.close()
		close(r.released)
	})
}

// Read copies the next bytes of the file into p, waiting for the guest to
// send more when none are left. A failure in the guest (such as a missing
// file) matches ErrGuest; after Close, reads fail with ErrClosed.
func (r *FileReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		if r.closed.Load() {
			return 0, errReaderClosed
		}
		if err := r.ctx.Err(); err != nil {
			return 0, err
		}
		if len(r.chunk) > 0 || len(p) == 0 {
			n := copy(p, r.chunk)
			r.chunk = r.chunk[n:]
			return n, nil
		}
		if r.endErr != nil {
			return 0, r.endErr
		}
		chunk, err := r.pull()
		switch {
		case err == nil:
			r.chunk = chunk
		case r.closed.Load() || r.ctx.Err() != nil:
			// Interrupted: the checks above say why.
		default:
			r.endErr = pathError("read", r.path, err)
			// Nothing more will come: free the handle now, not at Close.
			r.release()
		}
	}
}

// pull waits on the poller until the library has a chunk or the end of
// the file, and takes it without blocking.
func (r *FileReader) pull() ([]byte, error) {
	var chunk []byte
	pullErr, waitErr := r.readiness.pull(func(errOut **C.msb_error) (C.msb_status, error) {
		r.handleMu.RLock()
		defer r.handleMu.RUnlock()
		if r.handle == nil {
			return 0, errReaderClosed
		}
		var buf *C.msb_bytes
		status := C.msb_file_reader_next(r.handle, 0, &buf, errOut)
		if status == C.MSB_OK {
			chunk = takeBytes(buf)
		}
		return status, nil
	})
	if waitErr != nil {
		return nil, &Error{Code: StatusIO, Message: "waiting for file data: " + waitErr.Error()}
	}
	return chunk, pullErr
}

// Close releases the reader, abandoning whatever of the file was not read.
// A Read blocked meanwhile returns an error matching ErrClosed. Close is
// idempotent.
func (r *FileReader) Close() error {
	r.closed.Store(true)
	r.release()
	return nil
}

// FileWriter writes a guest file piece by piece, so that it never has to
// be in memory whole. It implements io.WriteCloser: Close completes the
// file and reports whether the guest stored it. Created by Client.Create.
//
// Write and Close may be called from any goroutine; they take turns.
type FileWriter struct {
	ctx  context.Context
	path string

	// handleMu is held shared for every library call on handle and
	// exclusively to free it; handle is nil once released.
	handleMu    sync.RWMutex
	handle      *C.msb_file_writer
	releaseOnce sync.Once
	// released is closed once the handle has been freed; it stops the
	// goroutine watching ctx.
	released chan struct{}

	mu     sync.Mutex // serialises Write and Close; guards closed
	closed bool
}

// Create starts writing a guest file, creating or truncating it, with
// permission bits perm (0 means the guest's default, as for WriteFile).
// ctx governs the writer's whole life: once ctx is done, Write and Close
// return ctx.Err() and the file is abandoned unfinished. Each library call
// waits at most until ctx's deadline (60 s without one).
func (c *Client) Create(ctx context.Context, name string, perm fs.FileMode) (*FileWriter, error) {
	if err := checkString("path", name); err != nil {
		return nil, err
	}
	mode := guestMode(perm)
	var w *FileWriter
	op := func(h *C.msb_client, timeout C.int64_t) error {
		cPath := C.CString(name)
		defer C.free(unsafe.Pointer(cPath))
		var writer *C.msb_file_writer
		var libErr *C.msb_error
		if status := C.msb_file_writer_open(h, cPath, mode, timeout, &writer, &libErr); status != C.MSB_OK {
			return statusError(status, libErr)
		}
		w = &FileWriter{ctx: ctx, path: name, handle: writer, released: make(chan struct{})}
		return nil
	}
	// Once ctx ends the file is abandoned: freeing the writer does that.
	release := func() { w.release() }
	if err := c.openBound(ctx, op, release, func() <-chan struct{} { return w.released }); err != nil {
		return nil, pathError("open", name, err)
	}
	return w, nil
}

// release frees the handle once no library call uses it; unless the file
// was finished, that abandons it.
func (w *FileWriter) release() {
	w.releaseOnce.Do(func() {
		w.handleMu.Lock()
		C.msb_file_writer_free(w.handle)
		w.handle = nil
		w.handleMu.Unlock()
		close(w.released)
	})
}

// Write sends b as the next bytes of the file. The bytes are on their way
// to the guest when it returns; only Close confirms they were stored.
// After Close, writes fail with an error matching ErrClosed.
func (w *FileWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, errWriterClosed
	}
	written := 0
	for written < len(b) {
		piece := b[written:]
		if len(piece) > writePiece {
			piece = piece[:writePiece]
		}
		if err := w.send(piece); err != nil {
			return written, pathError("write", w.path, err)
		}
		written += len(piece)
	}
	return written, nil
}

// send writes one piece, on the caller's goroutine (see callOnce): a write
// blocks only while the connection's socket is full, at most until ctx's
// deadline (defaultCallTimeout without one).
func (w *FileWriter) send(piece []byte) error {
	return callOnce(w.ctx, func(timeout C.int64_t) error {
		w.handleMu.RLock()
		defer w.handleMu.RUnlock()
		if w.handle == nil {
			return errWriterClosed
		}
		var libErr *C.msb_error
		// The library copies the bytes into the socket before returning
		// and keeps no pointer to them.
		status := C.msb_file_writer_write(w.handle, (*C.uint8_t)(unsafe.Pointer(&piece[0])), C.size_t(len(piece)), timeout, &libErr)
		return statusError(status, libErr)
	})
}

// Close ends the file, waits for the guest to confirm it was stored, and
// releases the writer. If ctx is already done it only releases the writer,
// abandoning the file, and returns ctx.Err(). A second Close does nothing.
func (w *FileWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	err := callOnce(w.ctx, func(timeout C.int64_t) error {
		w.handleMu.RLock()
		defer w.handleMu.RUnlock()
		if w.handle == nil {
			return errWriterClosed
		}
		var libErr *C.msb_error
		status := C.msb_file_writer_finish(w.handle, timeout, &libErr)
		return statusError(status, libErr)
	})
	w.release()
	return pathError("close", w.path, err)
}
