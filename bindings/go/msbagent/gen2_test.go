package msbagent_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"github.com/microsandbox/libmicrosandbox_agent/bindings/go/msbagent"
)

// On a legacy sandbox every generation-2 call is refused with
// ErrUnsupported, and nothing is changed.
func checkGen2CallsUnsupported(t *testing.T, c *msbagent.Client) {
	ctx := testCtx(t)
	removeFromRelayAfter(t, "legacy-f", "legacy-empty", "legacy-link")
	if err := c.WriteFile(ctx, "/legacy-f", []byte("abc"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.MkdirAll(ctx, "/legacy-empty"); err != nil {
		t.Fatal(err)
	}
	calls := map[string]func() error{
		"Stat":              func() error { _, err := c.Stat(ctx, "/legacy-f"); return err },
		"Realpath":          func() error { _, err := c.Realpath(ctx, "/legacy-f"); return err },
		"Readlink":          func() error { _, err := c.Readlink(ctx, "/legacy-f"); return err },
		"Symlink":           func() error { return c.Symlink(ctx, "legacy-f", "/legacy-link") },
		"Chmod":             func() error { return c.Chmod(ctx, "/legacy-f", 0o600) },
		"Chown":             func() error { return c.Chown(ctx, "/legacy-f", os.Getuid(), os.Getgid()) },
		"Chtimes":           func() error { return c.Chtimes(ctx, "/legacy-f", time.Unix(1e9, 0), time.Unix(1e9, 0)) },
		"Truncate":          func() error { return c.Truncate(ctx, "/legacy-f", 1) },
		"OpenFile":          func() error { _, err := c.OpenFile(ctx, "/legacy-f", os.O_RDONLY, 0); return err },
		"Remove(empty dir)": func() error { return c.Remove(ctx, "/legacy-empty") },
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, msbagent.ErrUnsupported) {
			t.Errorf("%s on generation %d = %v, want ErrUnsupported", name, c.Generation(), err)
		}
	}
	host, err := os.Stat(filepath.Join(relayRoot, "legacy-f"))
	if err != nil || host.Size() != 3 || host.Mode().Perm() != 0o644 {
		t.Errorf("refused calls changed the file: %v, %v", host, err)
	}
	if _, err := os.Stat(filepath.Join(relayRoot, "legacy-empty")); err != nil {
		t.Errorf("the refused Remove removed the directory: %v", err)
	}
}

// Links, attributes and Remove's rules on sandboxes with handle-based
// files; ErrUnsupported for each of those calls on legacy ones.
func TestGen2Files(t *testing.T) {
	c := connect(t)
	if c.Generation() < handleFSGeneration {
		checkGen2CallsUnsupported(t, c)
		return
	}
	ctx := testCtx(t)
	removeFromRelayAfter(t, "g")
	hostPath := func(p string) string { return filepath.Join(relayRoot, p) }
	if err := c.MkdirAll(ctx, "/g/sub"); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteFile(ctx, "/g/f", []byte("0123456789"), 0o644); err != nil {
		t.Fatal(err)
	}

	// Links.
	if err := c.Symlink(ctx, "f", "/g/link"); err != nil {
		t.Fatalf("Symlink: %v", err)
	}
	var linkErr *os.LinkError
	if err := c.Symlink(ctx, "f", "/g/link"); !errors.Is(err, fs.ErrExist) || !errors.As(err, &linkErr) || linkErr.Op != "symlink" {
		t.Errorf("Symlink over an existing link = %v, want an *os.LinkError matching fs.ErrExist", err)
	}
	if target, err := os.Readlink(hostPath("g/link")); err != nil || target != "f" {
		t.Fatalf("the link on the host points at %q (%v), want f", target, err)
	}
	if l, err := c.Lstat(ctx, "/g/link"); err != nil || l.Mode()&fs.ModeSymlink == 0 {
		t.Errorf("Lstat(link) = %v, %v; want a symlink", l, err)
	}
	if s, err := c.Stat(ctx, "/g/link"); err != nil || !s.Mode().IsRegular() || s.Size() != 10 {
		t.Errorf("Stat(link) = %v, %v; want the 10-byte file it points at", s, err)
	}
	if target, err := c.Readlink(ctx, "/g/link"); err != nil || target != "f" {
		t.Errorf("Readlink = %q, %v; want f", target, err)
	}
	if _, err := c.Readlink(ctx, "/g/f"); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("Readlink of a file = %v, want EINVAL", err)
	}
	if real, err := c.Realpath(ctx, "/g/link"); err != nil || real != "/g/f" {
		t.Errorf("Realpath = %q, %v; want /g/f", real, err)
	}
	if err := c.Symlink(ctx, "nowhere", "/g/dangling"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Stat(ctx, "/g/dangling"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat of a dangling link = %v, want fs.ErrNotExist", err)
	}

	// Attributes, through the link (they follow it, as os.Chmod does).
	if err := c.Chmod(ctx, "/g/link", 0o600); err != nil {
		t.Fatalf("Chmod: %v", err)
	}
	if host, _ := os.Stat(hostPath("g/f")); host == nil || host.Mode().Perm() != 0o600 {
		t.Errorf("after Chmod(0600) the file's mode is %v", host.Mode())
	}
	atime, mtime := time.Unix(1_000_000_000, 0), time.Unix(1_100_000_000, 0)
	if err := c.Chtimes(ctx, "/g/f", atime, mtime); err != nil {
		t.Fatalf("Chtimes: %v", err)
	}
	info, err := c.Lstat(ctx, "/g/f")
	if err != nil {
		t.Fatal(err)
	}
	sys, _ := info.Sys().(*msbagent.FileSys)
	if !info.ModTime().Equal(mtime) || sys == nil || !sys.HasAccessTime || !sys.AccessTime.Equal(atime) {
		t.Errorf("after Chtimes: mtime %v, sys %+v; want %v and %v", info.ModTime(), sys, mtime, atime)
	}
	if err := c.Chown(ctx, "/g/f", os.Getuid(), os.Getgid()); err != nil {
		t.Fatalf("Chown to our own ids: %v", err)
	}
	if sys.UID != uint32(os.Getuid()) || sys.GID != uint32(os.Getgid()) {
		t.Errorf("Sys() = %+v, want uid %d gid %d", sys, os.Getuid(), os.Getgid())
	}
	if err := c.Chown(ctx, "/g/f", -2, 0); !errors.Is(err, msbagent.ErrInvalidArgument) {
		t.Errorf("Chown(-2) = %v, want ErrInvalidArgument", err)
	}
	// -1 keeps an id, and a zero time keeps a time, as in the os package.
	if err := c.Chown(ctx, "/g/f", -1, os.Getgid()); err != nil {
		t.Errorf("Chown(-1, gid): %v", err)
	}
	newMtime := time.Unix(1_200_000_000, 0)
	if err := c.Chtimes(ctx, "/g/f", time.Time{}, newMtime); err != nil {
		t.Fatalf("Chtimes(zero, mtime): %v", err)
	}
	if info, err := c.Lstat(ctx, "/g/f"); err != nil || !info.ModTime().Equal(newMtime) || !info.Sys().(*msbagent.FileSys).AccessTime.Equal(atime) {
		t.Errorf("after Chtimes(zero, %v): %v, %v; want the access time kept at %v", newMtime, info.ModTime(), err, atime)
	}
	if err := c.Truncate(ctx, "/g/f", 4); err != nil {
		t.Fatalf("Truncate: %v", err)
	}
	if data, err := os.ReadFile(hostPath("g/f")); err != nil || string(data) != "0123" {
		t.Errorf("after Truncate(4) the file holds %q (%v)", data, err)
	}
	if err := c.Chmod(ctx, "/g/missing", 0o600); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Chmod of a missing path = %v, want fs.ErrNotExist", err)
	}

	// Remove takes files, links and empty directories only.
	if err := c.Remove(ctx, "/g"); !errors.Is(err, syscall.ENOTEMPTY) {
		t.Errorf("Remove of a directory with entries = %v, want ENOTEMPTY", err)
	}
	if err := c.Remove(ctx, "/g/sub"); err != nil {
		t.Errorf("Remove of an empty directory: %v", err)
	}
	if err := c.Remove(ctx, "/g/dangling"); err != nil {
		t.Errorf("Remove of a link: %v", err)
	}
	for _, gone := range []string{"g/sub", "g/dangling"} {
		if _, err := os.Lstat(hostPath(gone)); !os.IsNotExist(err) {
			t.Errorf("%s is still there: %v", gone, err)
		}
	}
	if err := c.RemoveAll(ctx, "/g"); err != nil {
		t.Fatal(err)
	}
}

func TestFileHandles(t *testing.T) {
	c := connect(t)
	ctx := testCtx(t)
	removeFromRelayAfter(t, "h", "small")
	if c.Generation() < handleFSGeneration {
		if _, err := c.OpenFile(ctx, "/h", os.O_RDWR|os.O_CREATE, 0o640); !errors.Is(err, msbagent.ErrUnsupported) {
			t.Fatalf("OpenFile on generation %d = %v, want ErrUnsupported", c.Generation(), err)
		}
		return
	}
	f, err := c.OpenFile(ctx, "/h", os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		t.Fatalf("OpenFile(create): %v", err)
	}
	if _, err := c.OpenFile(ctx, "/h", os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o640); !errors.Is(err, fs.ErrExist) {
		t.Errorf("OpenFile(O_EXCL) of an existing file = %v, want fs.ErrExist", err)
	}
	if _, err := c.OpenFile(ctx, "/missing", os.O_RDONLY, 0); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("OpenFile of a missing file = %v, want fs.ErrNotExist", err)
	}
	if _, err := c.OpenFile(ctx, "/h", os.O_RDONLY|syscall.O_DIRECT, 0); !errors.Is(err, msbagent.ErrInvalidArgument) {
		t.Errorf("OpenFile with an unsupported flag = %v, want ErrInvalidArgument", err)
	}

	content := bytes.Repeat([]byte("positioned "), 1<<20) // 11 MiB: several pieces
	if n, err := f.WriteAt(content, 0); err != nil || n != len(content) {
		t.Fatalf("WriteAt = %d, %v", n, err)
	}
	if n, err := f.WriteAt([]byte("PATCH"), 11); err != nil || n != 5 {
		t.Fatalf("WriteAt(patch) = %d, %v", n, err)
	}
	copy(content[11:], "PATCH")
	onHost, err := os.ReadFile(filepath.Join(relayRoot, "h"))
	if err != nil || !bytes.Equal(onHost, content) {
		t.Fatalf("the file on the host has %d bytes (%v), want the %d written", len(onHost), err, len(content))
	}
	got := make([]byte, 16)
	if n, err := f.ReadAt(got, 11); err != nil || n != 16 || string(got) != "PATCHioned posit" {
		t.Errorf("ReadAt(11) = %q, %v", got[:n], err)
	}
	tail := make([]byte, 100)
	if n, err := f.ReadAt(tail, int64(len(content))-10); n != 10 || err != io.EOF {
		t.Errorf("ReadAt across the end = %d, %v; want 10, io.EOF", n, err)
	}
	info, err := f.Stat()
	if err != nil || info.Size() != int64(len(content)) || info.Mode().Perm() != 0o640 {
		t.Errorf("File.Stat = %v, %v", info, err)
	}
	if pos, err := f.Seek(-5, io.SeekEnd); err != nil || pos != int64(len(content))-5 {
		t.Errorf("Seek(-5, end) = %d, %v", pos, err)
	}
	if _, err := f.Write([]byte("END!!")); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := f.Close(); !errors.Is(err, msbagent.ErrClosed) || !errors.Is(err, fs.ErrClosed) {
		t.Errorf("second Close = %v, want ErrClosed and fs.ErrClosed", err)
	}
	if _, err := f.ReadAt(got, 0); !errors.Is(err, fs.ErrClosed) {
		t.Errorf("ReadAt after Close = %v, want fs.ErrClosed", err)
	}

	a, err := c.OpenFile(ctx, "/h", os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.WriteAt([]byte("+tail"), 0); err != nil {
		t.Fatalf("appending write: %v", err)
	}
	a.Close()
	onHost, _ = os.ReadFile(filepath.Join(relayRoot, "h"))
	if !bytes.HasSuffix(onHost, []byte("END!!+tail")) || len(onHost) != len(content)+5 {
		t.Errorf("after Seek/Write and an append the file ends %q (%d bytes)", onHost[len(onHost)-12:], len(onHost))
	}

	// The io.Reader, io.ReaderAt and io.Seeker contracts, checked by the
	// standard library's own tester (on a small file: it reads in tiny
	// pieces).
	small := bytes.Repeat([]byte("0123456789abcdef"), 64)
	if err := c.WriteFile(ctx, "/small", small, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := c.OpenFile(ctx, "/small", os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := iotest.TestReader(r, small); err != nil {
		t.Errorf("iotest.TestReader: %v", err)
	}
	r.Close()

	// A file whose context ends is given back to the guest.
	shortCtx, cancel := context.WithCancel(testCtx(t))
	g, err := c.OpenFile(shortCtx, "/h", os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := g.ReadAt(got, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("ReadAt after its context ended = %v, want context.Canceled", err)
	}
	g.Close()
}

func TestLiveness(t *testing.T) {
	c := connect(t)
	ctx := testCtx(t)
	if c.Generation() < livenessGeneration {
		if err := c.Ping(ctx); !errors.Is(err, msbagent.ErrUnsupported) {
			t.Errorf("Ping on generation %d = %v, want ErrUnsupported", c.Generation(), err)
		}
		if _, err := c.Touch(ctx); !errors.Is(err, msbagent.ErrUnsupported) {
			t.Errorf("Touch on generation %d = %v, want ErrUnsupported", c.Generation(), err)
		}
		return
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	first, err := c.Touch(ctx)
	if err != nil {
		t.Fatalf("Touch: %v", err)
	}
	second, err := c.Touch(ctx)
	if err != nil || second <= first {
		t.Fatalf("a second Touch = %d, %v; want more than %d", second, err, first)
	}
}
