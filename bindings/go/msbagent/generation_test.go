package msbagent_test

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/microsandbox/libmicrosandbox_agent/bindings/go/msbagent"
)

// profile is what the development relay imitates (MSB_DEVRELAY_PROFILE,
// whose default is the relay's, 0.7.13), and what a client must see on it.
type profile struct {
	name           string
	generation     int
	peerGeneration int
	legacy         bool
	agentVersion   string
}

var profiles = map[string]profile{
	"0.3.14": {"0.3.14", 1, 1, true, ""},
	"0.6.14": {"0.6.14", 7, 7, false, "0.6.14"},
	"0.7.13": {"0.7.13", 10, 10, false, "0.7.13"},
}

// relayProfile is the profile under test; an unknown name fails the run
// (in TestMain), so every test can rely on it.
func relayProfile() profile {
	name := os.Getenv("MSB_DEVRELAY_PROFILE")
	if name == "" {
		name = "0.7.13"
	}
	return profiles[name]
}

// Generations at which calls appear (the library refuses them below with
// ErrUnsupported).
const (
	handleFSGeneration = 2
	tcpGeneration      = 4
	livenessGeneration = 6
)

func TestHandshakeFacts(t *testing.T) {
	c := connect(t)
	want := relayProfile()
	if c.Generation() != want.generation || c.PeerGeneration() != want.peerGeneration ||
		c.IsLegacy() != want.legacy || c.AgentVersion() != want.agentVersion {
		t.Fatalf("profile %s: generation %d, peer %d, legacy %v, agent %q; want %+v",
			want.name, c.Generation(), c.PeerGeneration(), c.IsLegacy(), c.AgentVersion(), want)
	}
	start, end := c.IDRange()
	if start == 0 || end <= start {
		t.Errorf("IDRange() = [%d, %d), want a non-empty range without 0", start, end)
	}
	other := connect(t)
	if otherStart, otherEnd := other.IDRange(); otherStart < end && start < otherEnd {
		t.Errorf("two clients share ids: [%d, %d) and [%d, %d)", start, end, otherStart, otherEnd)
	}

	if !c.Supports("core.exec.request") || !c.Supports("core.fs.request") {
		t.Errorf("exec and fs requests must be supported on every profile")
	}
	if got := c.Supports("core.tcp.connect"); got != (want.generation >= tcpGeneration) {
		t.Errorf("Supports(core.tcp.connect) = %v at generation %d", got, want.generation)
	}
	if got := c.Supports("core.ping"); got != (want.generation >= livenessGeneration) {
		t.Errorf("Supports(core.ping) = %v at generation %d", got, want.generation)
	}
	if c.Supports("core.no.such.type") || c.Supports("core.exec\x00request") {
		t.Errorf("an unknown type or a NUL byte must not be supported")
	}
	c.Close()
	if c.Supports("core.exec.request") {
		t.Errorf("a closed client supports nothing")
	}
	if c.Generation() != want.generation {
		t.Errorf("Generation() changed after Close")
	}
}

// A command the guest cannot start: an *ExecFailedError from Run and Wait
// on agents that report it, exit code -1 on the legacy one.
func TestExecFailure(t *testing.T) {
	c := connect(t)
	res, err := c.Run(testCtx(t), "/no/such/command", nil)
	if relayProfile().legacy {
		if err != nil || res.ExitCode != -1 {
			t.Fatalf("legacy Run of a missing command = %+v, %v; want exit code -1", res, err)
		}
		return
	}
	var failed *msbagent.ExecFailedError
	if !errors.As(err, &failed) {
		t.Fatalf("Run of a missing command = %+v, %v; want an *ExecFailedError", res, err)
	}
	if failed.Kind != "not_found" || failed.Errno != int(syscall.ENOENT) || !strings.Contains(failed.Message, "/no/such/command") || failed.Stage == "" {
		t.Errorf("ExecFailedError = %+v, want kind not_found, ENOENT, the command in the message, a stage", failed)
	}
	if !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, msbagent.ErrExecFailed) {
		t.Errorf("the exec failure should match fs.ErrNotExist and ErrExecFailed: %v", err)
	}

	p, err := c.Exec(testCtx(t), "sh", &msbagent.ExecOptions{Dir: "/no/such/dir"})
	if err != nil {
		t.Fatal(err)
	}
	code, err := p.Wait()
	if !errors.As(err, &failed) || code != -1 {
		t.Fatalf("Wait for a bad directory = %d, %v; want -1 and an *ExecFailedError", code, err)
	}
	if failed.Kind == "" || failed.Errno == 0 {
		t.Errorf("ExecFailedError for a bad directory = %+v, want a kind and an errno", failed)
	}
	if _, err := io.ReadAll(p.Stdout()); !errors.As(err, &failed) {
		t.Errorf("reading stdout of a process that never started = %v, want the *ExecFailedError", err)
	}
}

// A process that closed its stdin: the guest's report of the failed write
// is returned by the next stdin write (agents 0.4.6+).
func TestStdinErrorSurfaces(t *testing.T) {
	c := connect(t)
	p, err := c.Exec(testCtx(t), "sh", &msbagent.ExecOptions{Args: []string{"-c", "exec 0<&-; echo closed; sleep 0.5"}})
	if err != nil {
		t.Fatal(err)
	}
	line := make([]byte, 16)
	if n, err := p.Stdout().Read(line); err != nil || string(line[:n]) != "closed\n" {
		t.Fatalf("first output = %q, %v", line[:n], err)
	}
	if _, err := p.Stdin().Write([]byte("into a closed pipe\n")); err != nil {
		t.Fatalf("the first write cannot know yet: %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	if code, err := p.Wait(); code != 0 || err != nil {
		t.Fatalf("Wait = %d, %v; a failed stdin write does not end the process", code, err)
	}
	_, err = p.Stdin().Write([]byte("more"))
	var stdinErr *msbagent.StdinError
	if relayProfile().legacy {
		if errors.As(err, &stdinErr) || !errors.Is(err, msbagent.ErrClosed) {
			t.Fatalf("legacy: write after Wait = %v, want ErrClosed (no stdin reports)", err)
		}
		return
	}
	if !errors.As(err, &stdinErr) || !errors.Is(err, syscall.EPIPE) || stdinErr.Message == "" {
		t.Fatalf("write after the guest reported the broken pipe = %#v, want a *StdinError matching EPIPE", err)
	}
	if err := p.Stdin().Close(); !errors.As(err, &stdinErr) {
		t.Errorf("Close of the broken stdin = %v, want the *StdinError", err)
	}
}
