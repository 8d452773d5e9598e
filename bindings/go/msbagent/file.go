package msbagent

/*
#include <stdlib.h>
#include <microsandbox_agent.h>
*/
import "C"

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"sync"
	"unsafe"
)

// readAtPiece is the most one read asks the guest for: a read that is not
// answered within its slice is asked again (see callSliced), so each
// request is kept to a size that arrives quickly.
const readAtPiece = 4 << 20

// File is a guest file opened through a guest handle (OpenFile), for
// positioned reads and writes: it implements io.ReaderAt, io.WriterAt,
// io.Reader, io.Writer, io.Seeker and io.Closer, as *os.File does. Handles
// need protocol generation 2 (0.5.x current relays and later).
//
// The ctx given to OpenFile governs the file's whole life: once it is
// done, calls return ctx.Err() and the handle is given back to the guest.
// Each call waits at most until ctx's deadline (60 s without one). File
// methods may be called from any goroutine.
type File struct {
	ctx  context.Context
	name string

	// handleMu is held shared for every library call on handle and
	// exclusively to free it; handle is nil once released.
	handleMu    sync.RWMutex
	handle      *C.msb_file
	releaseOnce sync.Once
	// released is closed once the handle has been freed; it stops the
	// goroutine watching ctx.
	released chan struct{}

	offsetMu sync.Mutex // serialises Read, Write and Seek; guards offset
	offset   int64
}

var errFileClosed = &Error{Code: StatusClosed, Message: "the file is closed"}

// openFlags maps os.OpenFile's flags to the library's MSB_FILE_* bits.
func openFlags(flag int) (C.uint32_t, error) {
	var bits C.uint32_t
	switch flag & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR) {
	case os.O_RDONLY:
		bits = C.MSB_FILE_READ
	case os.O_WRONLY:
		bits = C.MSB_FILE_WRITE
	case os.O_RDWR:
		bits = C.MSB_FILE_READ | C.MSB_FILE_WRITE
	default:
		return 0, &Error{Code: StatusInvalidArgument, Message: "open flags name no valid access mode"}
	}
	if flag&os.O_APPEND != 0 {
		bits |= C.MSB_FILE_APPEND
	}
	if flag&os.O_TRUNC != 0 {
		bits |= C.MSB_FILE_TRUNCATE
	}
	switch {
	case flag&os.O_CREATE != 0 && flag&os.O_EXCL != 0:
		bits |= C.MSB_FILE_CREATE_NEW
	case flag&os.O_CREATE != 0:
		bits |= C.MSB_FILE_CREATE
	}
	known := os.O_RDONLY | os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC | os.O_CREATE | os.O_EXCL
	if flag&^known != 0 {
		return 0, &Error{Code: StatusInvalidArgument, Message: "open flags other than O_RDONLY, O_WRONLY, O_RDWR, O_APPEND, O_TRUNC, O_CREATE and O_EXCL are not supported"}
	}
	return bits, nil
}

// OpenFile opens a guest file with os.OpenFile's flags (O_RDONLY, O_WRONLY,
// O_RDWR, O_APPEND, O_CREATE, O_EXCL, O_TRUNC) and, for a created file,
// permission bits perm (0: the guest's default). A missing file without
// O_CREATE matches fs.ErrNotExist, an existing one with O_CREATE|O_EXCL
// fs.ErrExist. Each open File holds one of the connection's 1024 guest
// handles until Close. Opening is a request the guest answers with the
// handle: it is sent once and waited for (a repeat would leave a handle
// open in the guest). Legacy sandboxes give ErrUnsupported.
func (c *Client) OpenFile(ctx context.Context, name string, flag int, perm fs.FileMode) (*File, error) {
	if err := checkString("path", name); err != nil {
		return nil, err
	}
	bits, err := openFlags(flag)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	mode := guestMode(perm)
	var f *File
	op := func(h *C.msb_client, timeout C.int64_t) error {
		cPath := C.CString(name)
		defer C.free(unsafe.Pointer(cPath))
		var file *C.msb_file
		var libErr *C.msb_error
		if status := C.msb_file_open(h, cPath, bits, mode, timeout, &file, &libErr); status != C.MSB_OK {
			return statusError(status, libErr)
		}
		f = &File{ctx: ctx, name: name, handle: file, released: make(chan struct{})}
		return nil
	}
	// Once ctx ends the handle goes back to the guest.
	release := func() { f.release() }
	if err := c.openBound(ctx, op, release, func() <-chan struct{} { return f.released }); err != nil {
		return nil, pathError("open", name, err)
	}
	return f, nil
}

// Name is the path the file was opened with.
func (f *File) Name() string { return f.name }

// release frees the handle once no library call uses it; a handle still
// open is closed without waiting for the guest's answer.
func (f *File) release() {
	f.releaseOnce.Do(func() {
		f.handleMu.Lock()
		C.msb_file_free(f.handle)
		f.handle = nil
		f.handleMu.Unlock()
		close(f.released)
	})
}

// call runs one library call on the live handle, in the given mode.
func (f *File) call(mode callMode, opName string, op func(h *C.msb_file, timeout C.int64_t, errOut **C.msb_error) C.msb_status) error {
	err := mode(f.ctx, func(timeout C.int64_t) error {
		f.handleMu.RLock()
		defer f.handleMu.RUnlock()
		if f.handle == nil {
			return errFileClosed
		}
		var libErr *C.msb_error
		return statusError(op(f.handle, timeout, &libErr), libErr)
	})
	if err == nil {
		return nil
	}
	return &fs.PathError{Op: opName, Path: f.name, Err: err}
}

// ReadAt reads len(b) bytes at offset off, as io.ReaderAt: fewer only at
// the end of the file, and then with io.EOF.
func (f *File) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 {
		return 0, &fs.PathError{Op: "read", Path: f.name, Err: errors.New("negative offset")}
	}
	n := 0
	for n < len(b) {
		want := len(b) - n
		if want > readAtPiece {
			want = readAtPiece
		}
		got, err := f.readPiece(b[n:n+want], off+int64(n))
		n += got
		if err != nil {
			return n, err
		}
		if got < want {
			return n, io.EOF
		}
	}
	return n, nil
}

// readPiece is one read request (it only reads, so it is sliced).
func (f *File) readPiece(b []byte, off int64) (int, error) {
	n := 0
	err := f.call(callSliced, "read", func(h *C.msb_file, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		var data *C.msb_bytes
		status := C.msb_file_read_at(h, C.uint64_t(off), C.uint64_t(len(b)), timeout, &data, errOut)
		if status == C.MSB_OK {
			n = copy(b, unsafe.Slice((*byte)(unsafe.Pointer(C.msb_bytes_data(data))), int(C.msb_bytes_len(data))))
			C.msb_bytes_free(data)
		}
		return status
	})
	return n, err
}

// WriteAt writes b at offset off, as io.WriterAt (on a file opened with
// O_APPEND the guest appends whatever off says). The write is sent once
// and waited for: a write cut short mid-frame by its deadline would end
// the whole connection (the library's rule for every send).
func (f *File) WriteAt(b []byte, off int64) (int, error) {
	if off < 0 {
		return 0, &fs.PathError{Op: "write", Path: f.name, Err: errors.New("negative offset")}
	}
	written := 0
	for written < len(b) {
		piece := b[written:]
		if len(piece) > writePiece {
			piece = piece[:writePiece]
		}
		err := f.call(callOnce, "write", func(h *C.msb_file, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
			// The library copies the bytes into the socket before returning
			// and keeps no pointer to them.
			return C.msb_file_write_at(h, C.uint64_t(off+int64(written)), (*C.uint8_t)(unsafe.Pointer(&piece[0])), C.size_t(len(piece)), timeout, errOut)
		})
		if err != nil {
			return written, err
		}
		written += len(piece)
	}
	return written, nil
}

// Read reads from the file's offset and advances it, as io.Reader.
func (f *File) Read(b []byte) (int, error) {
	f.offsetMu.Lock()
	defer f.offsetMu.Unlock()
	if len(b) == 0 {
		return 0, nil
	}
	n, err := f.ReadAt(b, f.offset)
	f.offset += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

// Write writes at the file's offset and advances it, as io.Writer.
func (f *File) Write(b []byte) (int, error) {
	f.offsetMu.Lock()
	defer f.offsetMu.Unlock()
	n, err := f.WriteAt(b, f.offset)
	f.offset += int64(n)
	return n, err
}

// Seek sets the offset of the next Read or Write, as io.Seeker; io.SeekEnd
// asks the guest for the file's size.
func (f *File) Seek(offset int64, whence int) (int64, error) {
	f.offsetMu.Lock()
	defer f.offsetMu.Unlock()
	var base int64
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		base = f.offset
	case io.SeekEnd:
		info, err := f.Stat()
		if err != nil {
			return f.offset, err
		}
		base = info.Size()
	default:
		return f.offset, &fs.PathError{Op: "seek", Path: f.name, Err: errors.New("invalid whence")}
	}
	if base+offset < 0 {
		return f.offset, &fs.PathError{Op: "seek", Path: f.name, Err: errors.New("negative position")}
	}
	f.offset = base + offset
	return f.offset, nil
}

// Stat describes the open file (it only reads, so it is sliced).
func (f *File) Stat() (*FileInfo, error) {
	var fi *FileInfo
	err := f.call(callSliced, "stat", func(h *C.msb_file, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		var entry *C.msb_fs_entry
		status := C.msb_file_fstat(h, timeout, &entry, errOut)
		if status == C.MSB_OK {
			fi = takeFileInfo(entry)
		}
		return status
	})
	if err != nil {
		return nil, err
	}
	return fi, nil
}

// Close gives the handle back to the guest and waits for it to confirm
// (until ctx's deadline, 60 s without one). A second Close returns an
// error matching ErrClosed, as os.File's does (fs.ErrClosed there).
func (f *File) Close() error {
	f.handleMu.RLock()
	open := f.handle != nil
	f.handleMu.RUnlock()
	if !open {
		return &fs.PathError{Op: "close", Path: f.name, Err: errFileClosed}
	}
	err := f.call(callOnce, "close", func(h *C.msb_file, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		return C.msb_file_close(h, timeout, errOut)
	})
	f.release()
	return err
}
