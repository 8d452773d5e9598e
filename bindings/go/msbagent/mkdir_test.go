package msbagent_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/microsandbox/libmicrosandbox_agent/bindings/go/msbagent"
)

// Mkdir behaves like os.Mkdir although the guest's mkdir creates parents:
// a missing parent, an existing path and a parent that is a file are
// refused, and nothing is created for them. MkdirAll creates the chain.
func TestMkdirDoesNotCreateParents(t *testing.T) {
	c := connect(t)
	ctx := testCtx(t)
	removeFromRelayAfter(t, "mk")

	err := c.Mkdir(ctx, "/mk/missing/child")
	var pathErr *fs.PathError
	if !errors.Is(err, fs.ErrNotExist) || !errors.As(err, &pathErr) || pathErr.Op != "mkdir" || pathErr.Path != "/mk/missing/child" {
		t.Fatalf("Mkdir under a missing parent = %#v, want a *fs.PathError matching fs.ErrNotExist", err)
	}
	if errors.Is(err, fs.ErrExist) {
		t.Errorf("a missing parent also matched fs.ErrExist: %v", err)
	}
	if _, err := os.Stat(filepath.Join(relayRoot, "mk")); !os.IsNotExist(err) {
		t.Fatalf("a refused Mkdir created parents: %v", err)
	}

	if err := c.Mkdir(ctx, "/mk"); err != nil {
		t.Fatalf("Mkdir(/mk) under the root: %v", err)
	}
	if err := c.Mkdir(ctx, "/mk/one/"); err != nil {
		t.Fatalf("Mkdir(/mk/one/) under an existing parent: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(relayRoot, "mk", "one")); err != nil || !fi.IsDir() {
		t.Fatalf("Mkdir did not create the directory: %v", err)
	}
	if err := c.Mkdir(ctx, "/mk/one"); !errors.Is(err, fs.ErrExist) || errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Mkdir of an existing directory = %v, want fs.ErrExist", err)
	}

	if err := c.WriteFile(ctx, "/mk/file", []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.Mkdir(ctx, "/mk/file/sub"); !errors.Is(err, syscall.ENOTDIR) {
		t.Fatalf("Mkdir under a file = %v, want ENOTDIR", err)
	}
	if err := c.Mkdir(ctx, "/mk/file"); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Mkdir over a file = %v, want fs.ErrExist", err)
	}

	if err := c.MkdirAll(ctx, "/mk/file"); !errors.Is(err, fs.ErrExist) || !errors.Is(err, msbagent.ErrGuest) {
		t.Fatalf("MkdirAll over a file = %v, want fs.ErrExist from the guest", err)
	}
	if err := c.MkdirAll(ctx, "/mk/deep/er/still"); err != nil {
		t.Fatalf("MkdirAll: %v", err)
	}
	if err := c.MkdirAll(ctx, "/mk/deep/er/still"); err != nil {
		t.Fatalf("MkdirAll of an existing directory: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(relayRoot, "mk", "deep", "er", "still")); err != nil || !fi.IsDir() {
		t.Fatalf("MkdirAll did not create the chain: %v", err)
	}

	if err := c.Mkdir(ctx, "/nul\x00byte"); !errors.Is(err, msbagent.ErrInvalidArgument) {
		t.Errorf("Mkdir(path with NUL) = %v, want ErrInvalidArgument", err)
	}
	if err := c.RemoveAll(ctx, "/mk"); err != nil {
		t.Fatal(err)
	}
}
