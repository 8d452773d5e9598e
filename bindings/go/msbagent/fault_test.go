package msbagent_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/microsandbox/libmicrosandbox_agent/bindings/go/msbagent"
)

// startFaultyRelay runs its own msb-devrelay with --fault mode (see
// startOwnRelay); the relay of with-devrelay.sh is a well-behaved one.
func startFaultyRelay(t *testing.T, mode string) string {
	t.Helper()
	return startOwnRelay(t, "--fault", mode)
}

// startOwnRelay runs an msb-devrelay of this test's own with extra
// arguments, imitating the profile under test (MSB_DEVRELAY_PROFILE,
// default 0.7.13), on a fresh socket, and returns the socket path. The
// relay binary is MSB_DEVRELAY or the build tree's.
func startOwnRelay(t *testing.T, extra ...string) string {
	t.Helper()
	mode := strings.Join(extra, " ")
	relay := os.Getenv("MSB_DEVRELAY")
	if relay == "" {
		relay = filepath.Join("..", "..", "..", "target", "release", "msb-devrelay")
	}
	dir := t.TempDir()
	socket := filepath.Join(dir, "agent.sock")
	args := append([]string{"--socket", socket, "--root", filepath.Join(dir, "root"), "--quiet",
		"--profile", relayProfile().name}, extra...)
	cmd := exec.Command(relay, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", relay, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	ready := make(chan bool, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- strings.Contains(line, "listening")
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("relay with %q did not report listening", mode)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("relay with %q did not start", mode)
	}
	return socket
}

// The connection dies after one stdout frame: that output is still
// delivered, then the read fails with ErrClosed (not io.EOF, which would
// pass for a normal exit).
func TestFaultCloseMidExecDeliversOutputThenError(t *testing.T) {
	c, err := msbagent.Connect(testCtx(t), startFaultyRelay(t, "close-mid-exec"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p, err := c.Exec(testCtx(t), "anything", nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(p.Stdout())
	if len(out) == 0 {
		t.Errorf("the frame sent before the connection closed was lost")
	}
	if !errors.Is(err, msbagent.ErrClosed) {
		t.Fatalf("reading past the dead connection returned %v, want ErrClosed", err)
	}
	if code, werr := p.Wait(); code != -1 || werr == nil {
		t.Errorf("Wait on a broken stream = %d, %v; want -1 and an error", code, werr)
	}
	if _, err := c.Run(testCtx(t), "true", nil); err == nil {
		t.Errorf("Run on a connection the relay closed succeeded")
	}
}

// A flooding process never leaves the readiness descriptor idle, so a
// cancellation must be noticed between pulls, not only while waiting.
func TestFaultFloodCancelReturnsPromptly(t *testing.T) {
	c, err := msbagent.Connect(testCtx(t), startFaultyRelay(t, "flood"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(testCtx(t))
	p, err := c.Exec(ctx, "anything", nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	var total int64
	go func() {
		n, err := io.Copy(io.Discard, p.Stdout())
		total = n
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("reading the flood after cancel returned %v, want context.Canceled", err)
		}
		if total < 1<<20 {
			t.Errorf("only %d bytes of the flood were read in 200ms", total)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("reading the flood did not stop within 2s of cancellation")
	}
}

// A relay that never completes the handshake: Connect honours ctx's
// deadline and reports a timeout that matches both sentinels.
func TestFaultNoHandshakeTimesOut(t *testing.T) {
	socket := startFaultyRelay(t, "no-handshake")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := msbagent.Connect(ctx, socket)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Connect to a silent relay = %v, want a deadline error", err)
	}
	if waited := time.Since(start); waited > 2*time.Second {
		t.Fatalf("Connect took %v with a 300ms deadline", waited)
	}
}

// A full relay closes new connections before the handshake: Connect says
// ErrRelayBusy, and a freed slot lets the next one in.
func TestFullRelayIsBusy(t *testing.T) {
	socket := startOwnRelay(t)
	slots := 128
	if relayProfile().legacy {
		slots = 16
	}
	var clients []*msbagent.Client
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for i := 0; i < slots; i++ {
		c, err := msbagent.Connect(testCtx(t), socket)
		if err != nil {
			t.Fatalf("client %d of %d: %v", i+1, slots, err)
		}
		clients = append(clients, c)
	}
	_, err := msbagent.Connect(testCtx(t), socket)
	if !errors.Is(err, msbagent.ErrRelayBusy) {
		t.Fatalf("client %d on a relay with %d slots = %v, want ErrRelayBusy", slots+1, slots, err)
	}
	clients[0].Close()
	clients = clients[1:]
	var again *msbagent.Client
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if again, err = msbagent.Connect(testCtx(t), socket); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("after a client left, connecting = %v", err)
	}
	clients = append(clients, again)
}

// floodClient connects with the smallest memory budget, and backpressure,
// to a relay that answers an exec with 64 KiB output frames without end
// (whatever the profile, even one with exec flow control), and starts
// such an exec that nobody reads yet.
func floodClient(t *testing.T, backpressure msbagent.Backpressure) (*msbagent.Client, *msbagent.Process, time.Time) {
	t.Helper()
	ctx := testCtx(t)
	c, err := msbagent.ConnectWithOptions(ctx, startFaultyRelay(t, "flood"), &msbagent.ConnectOptions{
		MemoryBudget: msbagent.MinMemoryBudget,
		Backpressure: backpressure,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	started := time.Now()
	p, err := c.Exec(ctx, "endless-output", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return c, p, started
}

// By default a stream nobody reads fails once the budget has stayed full
// for the 1 s grace; the connection and its other requests carry on.
func TestUnreadStreamOverflowsAfterTheGrace(t *testing.T) {
	c, p, started := floodClient(t, msbagent.BackpressureFailStream)
	// Long enough for the flood to fill the budget and the socket's
	// buffers: the stat's answer is behind them, and the socket is not
	// read again before the grace has run out.
	time.Sleep(300 * time.Millisecond)
	if _, err := c.Lstat(testCtx(t), "/"); err != nil {
		t.Fatalf("Lstat while the stream is unread: %v", err)
	}
	answeredAfter := time.Since(started)
	if answeredAfter < 900*time.Millisecond || answeredAfter > 4*time.Second {
		t.Errorf("Lstat answered %v after the flood began, want after the 1 s grace and soon after it", answeredAfter)
	}
	// What was queued before the failure comes first (unless it was
	// released to make room), then the failure: an endless stream that
	// ends proves that it failed.
	n, err := io.Copy(io.Discard, p.Stdout())
	if !errors.Is(err, msbagent.ErrStreamOverflow) {
		t.Fatalf("reading the unread stream: %v after %d bytes, want ErrStreamOverflow", err, n)
	}
	if !strings.Contains(err.Error(), "memory budget") {
		t.Errorf("overflow error %q does not name the memory budget", err)
	}
	if n > 1<<20 {
		t.Errorf("%d bytes delivered before the overflow, want at most the budget and one read", n)
	}
	if code, err := p.Wait(); !errors.Is(err, msbagent.ErrStreamOverflow) || code != -1 {
		t.Errorf("Wait = %d, %v; want -1, ErrStreamOverflow", code, err)
	}
	if _, err := c.Lstat(testCtx(t), "/"); err != nil {
		t.Errorf("Lstat after the overflow: %v", err)
	}
}

// With BackpressurePauseSocket nothing fails: the whole connection waits
// (a request is not answered meanwhile) until the stream is read, and then
// its data flows again.
func TestPauseSocketHoldsTheConnectionUntilTheStreamIsRead(t *testing.T) {
	c, p, _ := floodClient(t, msbagent.BackpressurePauseSocket)
	// Once the flood has filled the budget (a request sent before may be
	// answered at once), nothing is read: past the grace the default would
	// give, and short of the 5 s after which a 0.7 relay drops a client
	// that does not read.
	time.Sleep(300 * time.Millisecond)
	ctx, cancel := context.WithTimeout(testCtx(t), 1700*time.Millisecond)
	defer cancel()
	if _, err := c.Lstat(ctx, "/"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lstat on a paused connection: %v, want the deadline to pass", err)
	}
	// Sixteen budgets: nothing was dropped or failed.
	const want = 16 * msbagent.MinMemoryBudget
	n, err := io.CopyN(io.Discard, p.Stdout(), want)
	if err != nil {
		t.Fatalf("reading after the pause: %v after %d bytes", err, n)
	}
	// A closed process's later frames are dropped, not queued: the socket
	// is read again and the connection answers.
	p.Close()
	if _, err := c.Lstat(testCtx(t), "/"); err != nil {
		t.Errorf("Lstat after closing the unread process: %v", err)
	}
}
