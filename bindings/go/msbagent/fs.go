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
	"path"
	"sort"
	"syscall"
	"time"
	"unsafe"
)

// FileInfo describes a guest file, directory or link. It implements
// io/fs.FileInfo.
type FileInfo struct {
	path       string
	size       int64
	mode       fs.FileMode
	modTime    time.Time
	hasModTime bool
}

// Path is the entry's full guest path.
func (fi *FileInfo) Path() string { return fi.path }

// Name is the last element of Path.
func (fi *FileInfo) Name() string { return path.Base(fi.path) }

// Size is the length in bytes.
func (fi *FileInfo) Size() int64 { return fi.size }

// Mode holds the permission bits and the type (fs.ModeDir, fs.ModeSymlink,
// or fs.ModeIrregular for anything that is not a file, directory or link).
func (fi *FileInfo) Mode() fs.FileMode { return fi.mode }

// ModTime is the modification time, or the zero time if the guest did not
// report one (see HasModTime).
func (fi *FileInfo) ModTime() time.Time { return fi.modTime }

// HasModTime reports whether the guest reported a modification time.
func (fi *FileInfo) HasModTime() bool { return fi.hasModTime }

// IsDir reports whether the entry is a directory.
func (fi *FileInfo) IsDir() bool { return fi.mode.IsDir() }

// Sys returns nil: there is no underlying host data.
func (fi *FileInfo) Sys() any { return nil }

// newFileInfo copies a library entry into Go memory.
func newFileInfo(entry *C.msb_fs_entry) *FileInfo {
	unixMode := uint32(C.msb_fs_entry_mode(entry))
	mode := fs.FileMode(unixMode & 0o777)
	const setuid, setgid, sticky = 0o4000, 0o2000, 0o1000
	if unixMode&setuid != 0 {
		mode |= fs.ModeSetuid
	}
	if unixMode&setgid != 0 {
		mode |= fs.ModeSetgid
	}
	if unixMode&sticky != 0 {
		mode |= fs.ModeSticky
	}
	switch C.msb_fs_entry_kind(entry) {
	case C.MSB_FS_KIND_FILE:
	case C.MSB_FS_KIND_DIR:
		mode |= fs.ModeDir
	case C.MSB_FS_KIND_SYMLINK:
		mode |= fs.ModeSymlink
	default:
		mode |= fs.ModeIrregular
	}
	fi := &FileInfo{
		path: C.GoString(C.msb_fs_entry_path(entry)),
		size: int64(C.msb_fs_entry_size(entry)),
		mode: mode,
	}
	var mtime C.int64_t
	if C.msb_fs_entry_mtime(entry, &mtime) {
		fi.modTime = time.Unix(int64(mtime), 0)
		fi.hasModTime = true
	}
	return fi
}

// pathCall runs a library call that takes one guest path, in the given
// mode: callSliced for calls that only read, callOnce for the others.
// The guest's failure is returned as an *fs.PathError naming opName and
// the path, as the os package does.
func (c *Client) pathCall(ctx context.Context, mode callMode, opName, guestPath string, op func(h *C.msb_client, cPath *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status) error {
	if err := checkString("path", guestPath); err != nil {
		return err
	}
	return pathError(opName, guestPath, c.call(ctx, mode, func(h *C.msb_client, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		cPath := C.CString(guestPath)
		defer C.free(unsafe.Pointer(cPath))
		return op(h, cPath, timeout, errOut)
	}))
}

// pathError wraps a failure the guest reported for a path in an
// *fs.PathError; other errors (a closed client, a timeout, ...) are not
// about the path and are returned as they are.
func pathError(opName, guestPath string, err error) error {
	var e *Error
	if errors.As(err, &e) && e.guest {
		return &fs.PathError{Op: opName, Path: guestPath, Err: err}
	}
	return err
}

// underPathError is the error an *fs.PathError wraps, or err itself.
func underPathError(err error) error {
	if pe, ok := err.(*fs.PathError); ok {
		return pe.Err
	}
	return err
}

// twoPathCall runs a library call that takes a source and a destination;
// they all change the guest, so it is made once. The guest's failure is
// returned as an *os.LinkError, as os.Rename does.
func (c *Client) twoPathCall(ctx context.Context, opName, src, dst string, op func(h *C.msb_client, cSrc, cDst *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status) error {
	if err := checkString("source path", src); err != nil {
		return err
	}
	if err := checkString("destination path", dst); err != nil {
		return err
	}
	err := c.call(ctx, callOnce, func(h *C.msb_client, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		cSrc := C.CString(src)
		defer C.free(unsafe.Pointer(cSrc))
		cDst := C.CString(dst)
		defer C.free(unsafe.Pointer(cDst))
		return op(h, cSrc, cDst, timeout, errOut)
	})
	var e *Error
	if errors.As(err, &e) && e.guest {
		return &os.LinkError{Op: opName, Old: src, New: dst, Err: err}
	}
	return err
}

// ReadFile returns the whole content of a guest file. It reads through
// Open, so waiting for the data is done on the poller and a cancelled ctx
// stops it at once.
func (c *Client) ReadFile(ctx context.Context, name string) ([]byte, error) {
	r, err := c.Open(ctx, name)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	return data, nil
}

// WriteFile writes data to a guest file, creating or truncating it, with
// permission bits perm (0 means the guest's default). It writes through
// Create, so a cancelled ctx stops it between pieces, abandoning the file.
func (c *Client) WriteFile(ctx context.Context, name string, data []byte, perm fs.FileMode) error {
	w, err := c.Create(ctx, name, perm)
	if err != nil {
		return err
	}
	if _, err := w.Write(data); err != nil {
		w.Close()
		return err
	}
	return w.Close()
}

// guestMode is the library's mode argument for perm: its permission bits,
// or -1 (the guest's default) for 0.
func guestMode(perm fs.FileMode) C.int32_t {
	if perm == 0 {
		return -1
	}
	return C.int32_t(perm.Perm())
}

// Stat returns metadata of a guest path (a symlink is described itself,
// not followed). A missing path gives an error matching fs.ErrNotExist
// (and ErrGuest).
func (c *Client) Stat(ctx context.Context, name string) (*FileInfo, error) {
	var fi *FileInfo
	err := c.pathCall(ctx, callSliced, "stat", name, func(h *C.msb_client, cPath *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		var entry *C.msb_fs_entry
		status := C.msb_fs_stat(h, cPath, timeout, &entry, errOut)
		if status == C.MSB_OK {
			fi = newFileInfo(entry)
			C.msb_fs_entry_free(entry)
		}
		return status
	})
	if err != nil {
		return nil, err
	}
	return fi, nil
}

// ListDir describes every entry of a guest directory, sorted by name: one
// call gives each entry's full *FileInfo.
func (c *Client) ListDir(ctx context.Context, name string) ([]*FileInfo, error) {
	var infos []*FileInfo
	err := c.pathCall(ctx, callSliced, "readdir", name, func(h *C.msb_client, cPath *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		var entries *C.msb_fs_entries
		status := C.msb_fs_list(h, cPath, timeout, &entries, errOut)
		if status == C.MSB_OK {
			n := int(C.msb_fs_entries_len(entries))
			infos = make([]*FileInfo, 0, n)
			for i := 0; i < n; i++ {
				infos = append(infos, newFileInfo(C.msb_fs_entries_get(entries, C.size_t(i))))
			}
			C.msb_fs_entries_free(entries)
		}
		return status
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Name() < infos[j].Name() })
	return infos, nil
}

// ReadDir lists a guest directory as fs.DirEntry values sorted by name,
// like os.ReadDir. Each entry's Info is already known (it is the
// *FileInfo ListDir gives) and costs no further call.
func (c *Client) ReadDir(ctx context.Context, name string) ([]fs.DirEntry, error) {
	infos, err := c.ListDir(ctx, name)
	if err != nil {
		return nil, err
	}
	entries := make([]fs.DirEntry, len(infos))
	for i, fi := range infos {
		entries[i] = fs.FileInfoToDirEntry(fi)
	}
	return entries, nil
}

// Mkdir creates one guest directory, like os.Mkdir: its parent must be an
// existing directory (else the error matches fs.ErrNotExist, or is
// syscall.ENOTDIR for a parent that is not a directory), and the path
// must not exist (else it matches fs.ErrExist). Errors are
// *fs.PathError values.
//
// The guest's own mkdir creates missing parents and accepts an existing
// directory, so Mkdir checks both conditions with stats first. Another
// client changing the guest between the checks and the creation can slip
// through: a parent removed meanwhile is created again, and a directory
// created meanwhile is accepted.
func (c *Client) Mkdir(ctx context.Context, name string) error {
	if err := checkString("path", name); err != nil {
		return err
	}
	parent := path.Dir(path.Clean(name))
	switch info, err := c.Stat(ctx, parent); {
	case err != nil:
		// A missing parent matches fs.ErrNotExist.
		return &fs.PathError{Op: "mkdir", Path: name, Err: underPathError(err)}
	case !info.IsDir():
		return &fs.PathError{Op: "mkdir", Path: name, Err: syscall.ENOTDIR}
	}
	switch _, err := c.Stat(ctx, name); {
	case err == nil:
		return &fs.PathError{Op: "mkdir", Path: name, Err: fs.ErrExist}
	case !errors.Is(err, fs.ErrNotExist):
		return &fs.PathError{Op: "mkdir", Path: name, Err: underPathError(err)}
	}
	return c.mkdirAll(ctx, name)
}

// MkdirAll creates a guest directory and any missing parents, like
// os.MkdirAll; an existing directory is not an error.
func (c *Client) MkdirAll(ctx context.Context, name string) error {
	return c.mkdirAll(ctx, name)
}

// mkdirAll is the guest's mkdir, which creates parents and accepts an
// existing directory: sending it twice does no harm, so it is sliced.
func (c *Client) mkdirAll(ctx context.Context, name string) error {
	return c.pathCall(ctx, callSliced, "mkdir", name, func(h *C.msb_client, cPath *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		return C.msb_fs_mkdir(h, cPath, timeout, errOut)
	})
}

// Remove removes a guest file.
func (c *Client) Remove(ctx context.Context, name string) error {
	return c.pathCall(ctx, callOnce, "remove", name, func(h *C.msb_client, cPath *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		return C.msb_fs_remove(h, cPath, timeout, errOut)
	})
}

// RemoveAll removes a guest path and, for a directory, everything in it,
// like os.RemoveAll: a path that does not exist is not an error.
func (c *Client) RemoveAll(ctx context.Context, name string) error {
	err := c.pathCall(ctx, callOnce, "removeall", name, func(h *C.msb_client, cPath *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		return C.msb_fs_remove_dir(h, cPath, timeout, errOut)
	})
	if err == nil || errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	// The guest removes only directories this way: a file or link is
	// removed as such.
	if info, statErr := c.Stat(ctx, name); statErr == nil && !info.IsDir() {
		err = c.Remove(ctx, name)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
	}
	return err
}

// Copy copies the guest file src to dst.
func (c *Client) Copy(ctx context.Context, src, dst string) error {
	return c.twoPathCall(ctx, "copy", src, dst, func(h *C.msb_client, cSrc, cDst *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		return C.msb_fs_copy(h, cSrc, cDst, timeout, errOut)
	})
}

// Rename renames (moves) the guest path src to dst.
func (c *Client) Rename(ctx context.Context, src, dst string) error {
	return c.twoPathCall(ctx, "rename", src, dst, func(h *C.msb_client, cSrc, cDst *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		return C.msb_fs_rename(h, cSrc, cDst, timeout, errOut)
	})
}
