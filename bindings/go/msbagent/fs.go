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
	sys        *FileSys
}

// FileSys is what Sys returns: the owner and access time the guest
// reported. Legacy (0.3/0.4) sandboxes report neither: UID and GID are 0
// and HasAccessTime is false there.
type FileSys struct {
	UID, GID      uint32
	AccessTime    time.Time
	HasAccessTime bool
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

// Sys returns a *FileSys with the owner and the access time.
func (fi *FileInfo) Sys() any { return fi.sys }

// takeFileInfo copies an owned entry (from a stat call) into Go memory and
// frees it.
func takeFileInfo(entry *C.msb_fs_entry) *FileInfo {
	defer C.msb_fs_entry_free(entry)
	return newFileInfo(C.msb_fs_entry_as_view(entry))
}

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
	fi.sys = &FileSys{UID: uint32(C.msb_fs_entry_uid(entry)), GID: uint32(C.msb_fs_entry_gid(entry))}
	var atime C.int64_t
	if C.msb_fs_entry_atime(entry, &atime) {
		fi.sys.AccessTime = time.Unix(int64(atime), 0)
		fi.sys.HasAccessTime = true
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
	if errors.As(err, &e) && e.fromGuest() {
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
	if errors.As(err, &e) && e.fromGuest() {
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

// Lstat returns metadata of a guest path; a symlink is described itself,
// not followed. A missing path gives an *fs.PathError matching
// fs.ErrNotExist (and ErrGuest).
func (c *Client) Lstat(ctx context.Context, name string) (*FileInfo, error) {
	return c.statCall(ctx, "lstat", name, func(h *C.msb_client, cPath *C.char, timeout C.int64_t, entry **C.msb_fs_entry, errOut **C.msb_error) C.msb_status {
		return C.msb_fs_stat(h, cPath, timeout, entry, errOut)
	})
}

// Stat returns metadata of a guest path, following symlinks (a dangling
// link matches fs.ErrNotExist). It needs protocol generation 2: legacy
// (0.3/0.4) sandboxes cannot follow links and give ErrUnsupported; use
// Lstat there.
func (c *Client) Stat(ctx context.Context, name string) (*FileInfo, error) {
	return c.statCall(ctx, "stat", name, func(h *C.msb_client, cPath *C.char, timeout C.int64_t, entry **C.msb_fs_entry, errOut **C.msb_error) C.msb_status {
		return C.msb_fs_stat_follow(h, cPath, timeout, entry, errOut)
	})
}

// statCall runs a stat-like call (it only reads, so it is sliced).
func (c *Client) statCall(ctx context.Context, opName, name string, op func(h *C.msb_client, cPath *C.char, timeout C.int64_t, entry **C.msb_fs_entry, errOut **C.msb_error) C.msb_status) (*FileInfo, error) {
	var fi *FileInfo
	err := c.pathCall(ctx, callSliced, opName, name, func(h *C.msb_client, cPath *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		var entry *C.msb_fs_entry
		status := op(h, cPath, timeout, &entry, errOut)
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

// statFollowingIfAble is Stat where the sandbox can follow links, and
// Lstat on legacy ones, for checks that must work on every sandbox.
func (c *Client) statFollowingIfAble(ctx context.Context, name string) (*FileInfo, error) {
	if c.Generation() >= handleFSGeneration {
		return c.Stat(ctx, name)
	}
	return c.Lstat(ctx, name)
}

// handleFSGeneration is the protocol generation that brought handle-based
// files and the calls that go with them (Stat following links, Realpath,
// Readlink, Symlink, set-stat, OpenFile).
const handleFSGeneration = 2

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
	switch info, err := c.statFollowingIfAble(ctx, parent); {
	case err != nil:
		// A missing parent matches fs.ErrNotExist.
		return &fs.PathError{Op: "mkdir", Path: name, Err: underPathError(err)}
	case !info.IsDir():
		return &fs.PathError{Op: "mkdir", Path: name, Err: syscall.ENOTDIR}
	}
	switch _, err := c.Lstat(ctx, name); {
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

// Remove removes a guest file, link or empty directory, like os.Remove. A
// directory with entries gives an error matching syscall.ENOTEMPTY.
// Removing a directory needs protocol generation 2 (legacy sandboxes can
// only remove a directory with everything in it, RemoveAll): there it
// gives ErrUnsupported.
func (c *Client) Remove(ctx context.Context, name string) error {
	err := c.pathCall(ctx, callOnce, "remove", name, func(h *C.msb_client, cPath *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		return C.msb_fs_remove(h, cPath, timeout, errOut)
	})
	var e *Error
	if !errors.As(err, &e) || e.errno != int(syscall.EISDIR) {
		return err
	}
	return c.pathCall(ctx, callOnce, "remove", name, func(h *C.msb_client, cPath *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		return C.msb_fs_remove_dir_ex(h, cPath, false, timeout, errOut)
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
	if info, statErr := c.Lstat(ctx, name); statErr == nil && !info.IsDir() {
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

// Realpath is the canonical absolute guest path of name, with every
// symlink, "." and ".." resolved (realpath(3)); name must exist. It needs
// protocol generation 2 (ErrUnsupported on legacy sandboxes).
func (c *Client) Realpath(ctx context.Context, name string) (string, error) {
	return c.pathResult(ctx, "realpath", name, func(h *C.msb_client, cPath *C.char, timeout C.int64_t, out **C.msb_bytes, errOut **C.msb_error) C.msb_status {
		return C.msb_fs_realpath(h, cPath, timeout, out, errOut)
	})
}

// Readlink is the target stored in the symlink name, unresolved, like
// os.Readlink; a path that is not a link gives an error matching
// syscall.EINVAL. It needs protocol generation 2 (ErrUnsupported on
// legacy sandboxes).
func (c *Client) Readlink(ctx context.Context, name string) (string, error) {
	return c.pathResult(ctx, "readlink", name, func(h *C.msb_client, cPath *C.char, timeout C.int64_t, out **C.msb_bytes, errOut **C.msb_error) C.msb_status {
		return C.msb_fs_readlink(h, cPath, timeout, out, errOut)
	})
}

// pathResult runs a call that reads a path from the guest (it only reads,
// so it is sliced).
func (c *Client) pathResult(ctx context.Context, opName, name string, op func(h *C.msb_client, cPath *C.char, timeout C.int64_t, out **C.msb_bytes, errOut **C.msb_error) C.msb_status) (string, error) {
	var result string
	err := c.pathCall(ctx, callSliced, opName, name, func(h *C.msb_client, cPath *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		var out *C.msb_bytes
		status := op(h, cPath, timeout, &out, errOut)
		if status == C.MSB_OK {
			result = string(C.GoBytes(unsafe.Pointer(C.msb_bytes_data(out)), C.int(C.msb_bytes_len(out))))
			C.msb_bytes_free(out)
		}
		return status
	})
	if err != nil {
		return "", err
	}
	return result, nil
}

// Symlink creates newname as a symlink to oldname (stored as given; it need
// not exist), like os.Symlink. An existing newname matches fs.ErrExist. It
// needs protocol generation 2 (ErrUnsupported on legacy sandboxes).
func (c *Client) Symlink(ctx context.Context, oldname, newname string) error {
	return c.twoPathCall(ctx, "symlink", oldname, newname, func(h *C.msb_client, cOld, cNew *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		return C.msb_fs_symlink(h, cOld, cNew, timeout, errOut)
	})
}

// setAttrs describes a set-stat change; each field set is applied, the
// others are left alone.
type setAttrs struct {
	mode         *uint32
	uid, gid     *uint32
	size         *uint64
	atime, mtime *int64
}

// newSetAttrs builds the library's attribute set; the caller frees it.
func newSetAttrs(a setAttrs) (*C.msb_fs_set_attrs, error) {
	var attrs *C.msb_fs_set_attrs
	var libErr *C.msb_error
	if status := C.msb_fs_set_attrs_new(&attrs, &libErr); status != C.MSB_OK {
		return nil, statusError(status, libErr)
	}
	var steps []func() C.msb_status
	if a.mode != nil {
		steps = append(steps, func() C.msb_status { return C.msb_fs_set_attrs_mode(attrs, C.uint32_t(*a.mode), &libErr) })
	}
	if a.uid != nil {
		steps = append(steps, func() C.msb_status { return C.msb_fs_set_attrs_uid(attrs, C.uint32_t(*a.uid), &libErr) })
	}
	if a.gid != nil {
		steps = append(steps, func() C.msb_status { return C.msb_fs_set_attrs_gid(attrs, C.uint32_t(*a.gid), &libErr) })
	}
	if a.size != nil {
		steps = append(steps, func() C.msb_status { return C.msb_fs_set_attrs_size(attrs, C.uint64_t(*a.size), &libErr) })
	}
	if a.atime != nil {
		steps = append(steps, func() C.msb_status { return C.msb_fs_set_attrs_atime(attrs, C.int64_t(*a.atime), &libErr) })
	}
	if a.mtime != nil {
		steps = append(steps, func() C.msb_status { return C.msb_fs_set_attrs_mtime(attrs, C.int64_t(*a.mtime), &libErr) })
	}
	for _, step := range steps {
		if status := step(); status != C.MSB_OK {
			C.msb_fs_set_attrs_free(attrs)
			return nil, statusError(status, libErr)
		}
	}
	return attrs, nil
}

// setStat applies a to the path (following a final symlink, as os.Chmod and
// friends do). Setting the same attributes twice is harmless, so the call
// is sliced. It needs protocol generation 2.
func (c *Client) setStat(ctx context.Context, opName, name string, a setAttrs) error {
	attrs, err := newSetAttrs(a)
	if err != nil {
		return &fs.PathError{Op: opName, Path: name, Err: err}
	}
	defer C.msb_fs_set_attrs_free(attrs)
	return c.pathCall(ctx, callSliced, opName, name, func(h *C.msb_client, cPath *C.char, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		return C.msb_fs_set_stat(h, cPath, true, attrs, timeout, errOut)
	})
}

// unixPerm is mode's permission and setuid/setgid/sticky bits as the
// guest's mode bits.
func unixPerm(mode fs.FileMode) uint32 {
	bits := uint32(mode.Perm())
	if mode&fs.ModeSetuid != 0 {
		bits |= 0o4000
	}
	if mode&fs.ModeSetgid != 0 {
		bits |= 0o2000
	}
	if mode&fs.ModeSticky != 0 {
		bits |= 0o1000
	}
	return bits
}

// Chmod changes the mode of a guest path (following symlinks), like
// os.Chmod. It needs protocol generation 2 (ErrUnsupported on legacy
// sandboxes), as do Chown, Chtimes and Truncate.
func (c *Client) Chmod(ctx context.Context, name string, mode fs.FileMode) error {
	bits := unixPerm(mode)
	return c.setStat(ctx, "chmod", name, setAttrs{mode: &bits})
}

// Chown changes the owner and group of a guest path (following symlinks),
// like os.Chown: an id of -1 is left unchanged.
func (c *Client) Chown(ctx context.Context, name string, uid, gid int) error {
	var a setAttrs
	for _, id := range []struct {
		value int
		field **uint32
	}{{uid, &a.uid}, {gid, &a.gid}} {
		switch {
		case id.value == -1:
		case id.value < 0 || uint64(id.value) > 0xffffffff:
			return &fs.PathError{Op: "chown", Path: name, Err: &Error{Code: StatusInvalidArgument, Message: "ids must be -1 (unchanged) or between 0 and 2^32-1"}}
		default:
			v := uint32(id.value)
			*id.field = &v
		}
	}
	return c.setStat(ctx, "chown", name, a)
}

// Chtimes changes the access and modification times of a guest path
// (following symlinks), like os.Chtimes, to whole seconds; a zero
// time.Time leaves that time unchanged.
func (c *Client) Chtimes(ctx context.Context, name string, atime, mtime time.Time) error {
	var a setAttrs
	if !atime.IsZero() {
		at := atime.Unix()
		a.atime = &at
	}
	if !mtime.IsZero() {
		mt := mtime.Unix()
		a.mtime = &mt
	}
	return c.setStat(ctx, "chtimes", name, a)
}

// Truncate changes the size of a guest file, like os.Truncate: it is cut
// short or extended with zeros.
func (c *Client) Truncate(ctx context.Context, name string, size int64) error {
	if size < 0 {
		return &fs.PathError{Op: "truncate", Path: name, Err: syscall.EINVAL}
	}
	n := uint64(size)
	return c.setStat(ctx, "truncate", name, setAttrs{size: &n})
}
