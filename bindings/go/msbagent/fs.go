package msbagent

/*
#include <stdlib.h>
#include <microsandbox_agent.h>
*/
import "C"

import (
	"context"
	"io/fs"
	"path"
	"sort"
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

// newFileInfo copies a library entry (a view: owned by a listing or by an
// msb_fs_entry) into Go memory.
func newFileInfo(entry *C.msb_fs_entry_view) *FileInfo {
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

// pathCall runs a library call that takes one guest path.
func (c *Client) pathCall(ctx context.Context, guestPath string, op func(h *C.msb_client, cPath *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status) error {
	if err := checkString("path", guestPath); err != nil {
		return err
	}
	return c.call(ctx, func(h *C.msb_client, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		cPath := C.CString(guestPath)
		defer C.free(unsafe.Pointer(cPath))
		return op(h, cPath, timeout, errOut)
	}, nil)
}

// twoPathCall runs a library call that takes a source and a destination.
func (c *Client) twoPathCall(ctx context.Context, src, dst string, op func(h *C.msb_client, cSrc, cDst *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status) error {
	if err := checkString("source path", src); err != nil {
		return err
	}
	if err := checkString("destination path", dst); err != nil {
		return err
	}
	return c.call(ctx, func(h *C.msb_client, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		cSrc := C.CString(src)
		defer C.free(unsafe.Pointer(cSrc))
		cDst := C.CString(dst)
		defer C.free(unsafe.Pointer(cDst))
		return op(h, cSrc, cDst, timeout, errOut)
	}, nil)
}

// ReadFile returns the whole content of a guest file.
func (c *Client) ReadFile(ctx context.Context, name string) ([]byte, error) {
	var data []byte
	err := c.pathCall(ctx, name, func(h *C.msb_client, cPath *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		var buf *C.msb_bytes
		status := C.msb_fs_read_file(h, cPath, timeout, &buf, errOut)
		if status == C.MSB_OK {
			data = C.GoBytes(unsafe.Pointer(C.msb_bytes_data(buf)), C.int(C.msb_bytes_len(buf)))
			C.msb_bytes_free(buf)
		}
		return status
	})
	if err != nil {
		return nil, err
	}
	return data, nil
}

// WriteFile writes data to a guest file, creating or truncating it, with
// permission bits perm (0 means the guest's default).
func (c *Client) WriteFile(ctx context.Context, name string, data []byte, perm fs.FileMode) error {
	mode := guestMode(perm)
	// The call may outlive a cancelled caller, who is then free to reuse
	// data: take a private copy now, before WriteFile can return. The
	// library only reads it during the call and keeps no pointer to it, so
	// cgo lets us pass the Go memory directly.
	private := append([]byte(nil), data...)
	return c.pathCall(ctx, name, func(h *C.msb_client, cPath *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		var p *C.uint8_t
		if len(private) > 0 {
			p = (*C.uint8_t)(unsafe.Pointer(&private[0]))
		}
		return C.msb_fs_write_file(h, cPath, p, C.size_t(len(private)), mode, timeout, errOut)
	})
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
// not followed).
func (c *Client) Stat(ctx context.Context, name string) (*FileInfo, error) {
	var fi *FileInfo
	err := c.pathCall(ctx, name, func(h *C.msb_client, cPath *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		var entry *C.msb_fs_entry
		status := C.msb_fs_stat(h, cPath, timeout, &entry, errOut)
		if status == C.MSB_OK {
			fi = newFileInfo(C.msb_fs_entry_as_view(entry))
			C.msb_fs_entry_free(entry)
		}
		return status
	})
	if err != nil {
		return nil, err
	}
	return fi, nil
}

// ReadDir lists the entries of a guest directory, sorted by name.
func (c *Client) ReadDir(ctx context.Context, name string) ([]*FileInfo, error) {
	var infos []*FileInfo
	err := c.pathCall(ctx, name, func(h *C.msb_client, cPath *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
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

// Mkdir creates a guest directory and any missing parents (like
// os.MkdirAll).
func (c *Client) Mkdir(ctx context.Context, name string) error {
	return c.pathCall(ctx, name, func(h *C.msb_client, cPath *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		return C.msb_fs_mkdir(h, cPath, timeout, errOut)
	})
}

// Remove removes a guest file.
func (c *Client) Remove(ctx context.Context, name string) error {
	return c.pathCall(ctx, name, func(h *C.msb_client, cPath *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		return C.msb_fs_remove(h, cPath, timeout, errOut)
	})
}

// RemoveAll removes a guest directory and everything in it. Unlike
// os.RemoveAll, a path that does not exist is an error (ErrGuest).
func (c *Client) RemoveAll(ctx context.Context, name string) error {
	return c.pathCall(ctx, name, func(h *C.msb_client, cPath *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		return C.msb_fs_remove_dir(h, cPath, timeout, errOut)
	})
}

// Copy copies the guest file src to dst.
func (c *Client) Copy(ctx context.Context, src, dst string) error {
	return c.twoPathCall(ctx, src, dst, func(h *C.msb_client, cSrc, cDst *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		return C.msb_fs_copy(h, cSrc, cDst, timeout, errOut)
	})
}

// Rename renames (moves) the guest path src to dst.
func (c *Client) Rename(ctx context.Context, src, dst string) error {
	return c.twoPathCall(ctx, src, dst, func(h *C.msb_client, cSrc, cDst *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		return C.msb_fs_rename(h, cSrc, cDst, timeout, errOut)
	})
}
