package msbagent_test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/microsandbox/libmicrosandbox_agent/bindings/go/msbagent"
)

// sandboxLayouts are the three places a runtime line puts a sandbox's
// relay socket, newest first, under home.
func sandboxLayouts(home, name string) []string {
	sum := sha256.Sum256([]byte(name))
	digest := hex.EncodeToString(sum[:])
	return []string{
		filepath.Join(home, "run", "sandboxes", digest[:24], "agent.sock"),
		filepath.Join(home, "run", "agent", digest[:32]+".sock"),
		filepath.Join(home, "sandboxes", name, "runtime", "agent.sock"),
	}
}

// linkRelayAt makes socketPath lead to the development relay.
func linkRelayAt(t *testing.T, socketPath string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(socketPath), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(relaySocket, socketPath); err != nil {
		t.Fatal(err)
	}
}

// Each layout is found by name and connected to; with several present the
// newest wins; with none, the newest is named (and connecting fails with
// ErrNotFound).
func TestConnectSandboxInEveryLayout(t *testing.T) {
	home, err := os.MkdirTemp("", "msbh")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	t.Setenv("MSB_HOME", home)

	for i, name := range []string{"canonical", "flat", "legacy"} {
		want := sandboxLayouts(home, name)[i]
		linkRelayAt(t, want)
		got, err := msbagent.SandboxSocketPath(name)
		if err != nil || got != want {
			t.Fatalf("SandboxSocketPath(%q) = %q, %v; want %q", name, got, err, want)
		}
		c, err := msbagent.ConnectSandbox(testCtx(t), name)
		if err != nil {
			t.Fatalf("ConnectSandbox(%q) in layout %d: %v", name, i+1, err)
		}
		res, err := c.Run(testCtx(t), "echo", &msbagent.ExecOptions{Args: []string{name}})
		c.Close()
		if err != nil || string(res.Stdout) != name+"\n" {
			t.Fatalf("Run through the sandbox %q = %+v, %v", name, res, err)
		}
	}

	both := sandboxLayouts(home, "both")
	linkRelayAt(t, both[2])
	linkRelayAt(t, both[0])
	if got, err := msbagent.SandboxSocketPath("both"); err != nil || got != both[0] {
		t.Errorf("with the legacy and canonical layouts present, SandboxSocketPath = %q, %v; want the canonical %q", got, err, both[0])
	}

	if got, err := msbagent.SandboxSocketPath("absent"); err != nil || got != sandboxLayouts(home, "absent")[0] {
		t.Errorf("SandboxSocketPath(absent) = %q, %v; want the canonical layout", got, err)
	}
	if _, err := msbagent.ConnectSandbox(testCtx(t), "absent"); !errors.Is(err, msbagent.ErrNotFound) {
		t.Errorf("ConnectSandbox(absent) = %v, want ErrNotFound", err)
	}
	for _, bad := range []string{"", "a/b", ".", "..", "nul\x00byte"} {
		if _, err := msbagent.SandboxSocketPath(bad); !errors.Is(err, msbagent.ErrInvalidArgument) {
			t.Errorf("SandboxSocketPath(%q) = %v, want ErrInvalidArgument", bad, err)
		}
	}
}
