package msbagent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/microsandbox/libmicrosandbox_agent/bindings/go/msbagent"
)

// These tests talk to a real relay: run them under scripts/with-devrelay.sh
// (scripts/test-go.sh does), which exports MSB_SOCKET and MSB_DEVRELAY_ROOT.
var relaySocket, relayRoot string

func TestMain(m *testing.M) {
	relaySocket = os.Getenv("MSB_SOCKET")
	relayRoot = os.Getenv("MSB_DEVRELAY_ROOT")
	if relaySocket == "" || relayRoot == "" {
		fmt.Fprintln(os.Stderr, "FAIL: MSB_SOCKET and MSB_DEVRELAY_ROOT are not set; run the tests through scripts/test-go.sh (or scripts/with-devrelay.sh)")
		os.Exit(1)
	}
	if name := os.Getenv("MSB_DEVRELAY_PROFILE"); name != "" {
		if _, known := profiles[name]; !known {
			fmt.Fprintf(os.Stderr, "FAIL: MSB_DEVRELAY_PROFILE=%q is not a profile these tests know\n", name)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

// testCtx bounds every test call so a hang fails instead of stalling.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// cancelAndExpectReadCancelled cancels the context a read blocked on another
// goroutine depends on, and checks that the read, reporting on readDone,
// returns context.Canceled within a second.
func cancelAndExpectReadCancelled(t *testing.T, cancel context.CancelFunc, readDone <-chan error) {
	t.Helper()
	cancelledAt := time.Now()
	cancel()
	select {
	case err := <-readDone:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("read after cancel returned %v, want context.Canceled", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("read did not return within 2s of cancellation")
	}
	if waited := time.Since(cancelledAt); waited > time.Second {
		t.Errorf("read took %v to notice the cancellation", waited)
	}
}

// removeFromRelayAfter removes guest paths (relative to the relay's root)
// when the test ends, so that it can run again on the same relay
// (go test -count=N).
func removeFromRelayAfter(t *testing.T, paths ...string) {
	t.Helper()
	t.Cleanup(func() {
		for _, p := range paths {
			os.RemoveAll(filepath.Join(relayRoot, p))
		}
	})
}

func connect(t *testing.T) *msbagent.Client {
	t.Helper()
	c, err := msbagent.Connect(testCtx(t), relaySocket)
	if err != nil {
		t.Fatalf("Connect(%q): %v", relaySocket, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestVersionAndConnect(t *testing.T) {
	if v := msbagent.Version(); !regexp.MustCompile(`^\d+\.\d+\.\d+`).MatchString(v) {
		t.Errorf("Version() = %q, want MAJOR.MINOR.PATCH", v)
	}
	c := connect(t)
	ready := c.Ready()
	if ready.Boot < 0 || ready.Init < 0 || ready.Ready < 0 {
		t.Errorf("Ready() = %+v, want non-negative durations", ready)
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// Options the library would refuse are refused before anything is dialled,
// with a message saying which; valid ones reach the connection.
func TestConnectOptions(t *testing.T) {
	ctx := testCtx(t)
	for _, opts := range []*msbagent.ConnectOptions{
		{MemoryBudget: msbagent.MinMemoryBudget - 1},
		{MemoryBudget: -1},
		{Backpressure: msbagent.BackpressurePauseSocket + 1},
		{Backpressure: -1},
	} {
		_, err := msbagent.ConnectWithOptions(ctx, relaySocket, opts)
		var e *msbagent.Error
		if !errors.Is(err, msbagent.ErrInvalidArgument) || !errors.As(err, &e) || e.Message == "" {
			t.Errorf("ConnectWithOptions(%+v) = %v, want ErrInvalidArgument with a message", *opts, err)
		}
		if _, err := msbagent.ConnectSandboxWithOptions(ctx, "no-such-sandbox", opts); !errors.Is(err, msbagent.ErrInvalidArgument) {
			t.Errorf("ConnectSandboxWithOptions(%+v) = %v, want ErrInvalidArgument", *opts, err)
		}
	}
	// Checked before the socket path: the options are valid here.
	if _, err := msbagent.ConnectWithOptions(ctx, "/nonexistent/agent.sock", &msbagent.ConnectOptions{MemoryBudget: msbagent.MinMemoryBudget}); !errors.Is(err, msbagent.ErrNotFound) {
		t.Errorf("valid options, no relay: %v, want ErrNotFound", err)
	}
	for _, opts := range []*msbagent.ConnectOptions{
		nil,
		{},
		{MemoryBudget: msbagent.DefaultMemoryBudget, Backpressure: msbagent.BackpressurePauseSocket},
	} {
		c, err := msbagent.ConnectWithOptions(ctx, relaySocket, opts)
		if err != nil {
			t.Fatalf("ConnectWithOptions(%v): %v", opts, err)
		}
		res, err := c.Run(ctx, "echo", &msbagent.ExecOptions{Args: []string{"with options"}})
		if err != nil || string(res.Stdout) != "with options\n" {
			t.Errorf("Run over a connection with options %v: %v, %v", opts, res, err)
		}
		c.Close()
	}
	if got := msbagent.BackpressurePauseSocket.String(); got != "pause-socket" {
		t.Errorf("BackpressurePauseSocket.String() = %q", got)
	}
}

// A real command writing without end that nobody reads, with the smallest
// budget (below the 1 MiB that exec flow control lets a 0.7 guest send
// ahead, so every profile overflows): other calls are answered meanwhile,
// the stream fails with ErrStreamOverflow, and the command is killed.
func TestUnreadCommandOverflowsTheSmallestBudget(t *testing.T) {
	ctx := testCtx(t)
	c, err := msbagent.ConnectWithOptions(ctx, relaySocket, &msbagent.ConnectOptions{MemoryBudget: msbagent.MinMemoryBudget})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pidFile := filepath.Join(t.TempDir(), "pid")
	p, err := c.Exec(ctx, "sh", &msbagent.ExecOptions{Args: []string{"-c",
		`echo $$ > "$0"; while :; do head -c 65536 /dev/zero; done`, pidFile}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	// Past the 1 s grace, without reading.
	time.Sleep(1500 * time.Millisecond)
	if _, err := c.Lstat(ctx, "/"); err != nil {
		t.Fatalf("Lstat beside the unread command: %v", err)
	}
	n, err := io.Copy(io.Discard, p.Stdout())
	if !errors.Is(err, msbagent.ErrStreamOverflow) {
		t.Fatalf("reading the unread command: %v after %d bytes, want ErrStreamOverflow", err, n)
	}
	// The development relay runs commands on this host: the command must
	// be gone (or a zombie its relay has yet to reap).
	text, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(text)))
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || strings.Contains(string(stat), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("the overflowed command (pid %d) still runs", pid)
		}
	}
}

func TestExecStdinToStdout(t *testing.T) {
	c := connect(t)
	p, err := c.Exec(testCtx(t), "cat", nil)
	if err != nil {
		t.Fatal(err)
	}
	input := bytes.Repeat([]byte("through stdin and back\n"), 10000) // several frames
	writeErr := make(chan error, 1)
	go func() {
		if _, err := p.Stdin().Write(input); err != nil {
			writeErr <- err
			return
		}
		writeErr <- p.Stdin().Close()
	}()
	out, err := io.ReadAll(p.Stdout())
	if err != nil {
		t.Fatalf("reading stdout: %v", err)
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("writing stdin: %v", err)
	}
	if !bytes.Equal(out, input) {
		t.Fatalf("cat returned %d bytes, want the %d written", len(out), len(input))
	}
	code, err := p.Wait()
	if code != 0 || err != nil {
		t.Fatalf("Wait = %d, %v; want 0, nil", code, err)
	}
	if p.Pid() <= 0 {
		t.Errorf("Pid() = %d after the process ran, want the guest pid", p.Pid())
	}
}

func TestExecSeparatesStdoutAndStderr(t *testing.T) {
	c := connect(t)
	p, err := c.Exec(testCtx(t), "sh", &msbagent.ExecOptions{
		Args: []string{"-c", `for i in 1 2 3; do echo out$i; echo err$i >&2; done; exit 7`},
	})
	if err != nil {
		t.Fatal(err)
	}
	// Read stderr to the end first: stdout must be kept for later.
	stderr, err := io.ReadAll(p.Stderr())
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := io.ReadAll(p.Stdout())
	if err != nil {
		t.Fatal(err)
	}
	if string(stdout) != "out1\nout2\nout3\n" || string(stderr) != "err1\nerr2\nerr3\n" {
		t.Fatalf("stdout %q, stderr %q", stdout, stderr)
	}
	if code, err := p.Wait(); code != 7 || err != nil {
		t.Fatalf("Wait = %d, %v; want 7, nil", code, err)
	}
}

func TestRunWithOptions(t *testing.T) {
	c := connect(t)
	dir := t.TempDir() // exec runs on the host under the development relay
	res, err := c.Run(testCtx(t), "sh", &msbagent.ExecOptions{
		Args: []string{"-c", `printf '%s|%s' "$GREETING" "$(pwd)"; echo oops >&2; exit 3`},
		Env:  []string{"GREETING=hello=world"},
		Dir:  dir,
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := "hello=world|" + dir; string(res.Stdout) != want {
		t.Errorf("stdout = %q, want %q", res.Stdout, want)
	}
	if string(res.Stderr) != "oops\n" || res.ExitCode != 3 {
		t.Errorf("stderr %q, exit code %d; want \"oops\\n\", 3", res.Stderr, res.ExitCode)
	}
}

func TestConcurrentExecsOnOneClient(t *testing.T) {
	c := connect(t)
	ctx := testCtx(t)
	const workers = 16
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			p, err := c.Exec(ctx, "cat", nil)
			if err != nil {
				errs <- err
				return
			}
			want := bytes.Repeat([]byte(fmt.Sprintf("worker %02d\n", i)), 2000)
			go func() {
				p.Stdin().Write(want)
				p.Stdin().Close()
			}()
			got, err := io.ReadAll(p.Stdout())
			if err != nil {
				errs <- fmt.Errorf("worker %d: %v", i, err)
				return
			}
			if !bytes.Equal(got, want) {
				errs <- fmt.Errorf("worker %d: got %d bytes, want %d of its own output", i, len(got), len(want))
				return
			}
			if code, err := p.Wait(); code != 0 || err != nil {
				errs <- fmt.Errorf("worker %d: Wait = %d, %v", i, code, err)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// Blocked readers wait on Go's poller, so many of them must not each take
// an OS thread. Threads, once created, are kept for reuse, so the count is
// taken in a fresh process: the test re-runs itself as a child.
func TestBlockedReadersDoNotHoldThreads(t *testing.T) {
	if os.Getenv("MSB_GO_THREAD_CHILD") == "1" {
		blockedReadersChild(t)
		return
	}
	child := exec.Command(os.Args[0], "-test.run=^TestBlockedReadersDoNotHoldThreads$", "-test.count=1", "-test.v")
	child.Env = append(os.Environ(), "MSB_GO_THREAD_CHILD=1")
	out, err := child.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "threads created") {
		t.Fatalf("child test failed: %v\n%s", err, out)
	}
	t.Logf("child: %s", regexp.MustCompile(`[^\n]*threads created[^\n]*`).Find(out))
}

func blockedReadersChild(t *testing.T) {
	c := connect(t)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	const processes = 32
	threadsBefore := pprof.Lookup("threadcreate").Count()
	var readers sync.WaitGroup
	for i := 0; i < processes; i++ {
		p, err := c.Exec(ctx, "sleep", &msbagent.ExecOptions{Args: []string{"30"}})
		if err != nil {
			t.Fatal(err)
		}
		readers.Add(1)
		go func() {
			defer readers.Done()
			io.Copy(io.Discard, p.Stdout())
		}()
	}
	time.Sleep(300 * time.Millisecond) // every reader is now parked
	created := pprof.Lookup("threadcreate").Count() - threadsBefore
	cancel()
	readers.Wait()
	t.Logf("%d threads created while %d readers were blocked", created, processes)
	if created >= processes/2 {
		t.Fatalf("%d OS threads created for %d blocked readers; they should share the poller", created, processes)
	}
}

func TestCancelMidStreamLeavesClientUsable(t *testing.T) {
	c := connect(t)
	ctx, cancel := context.WithCancel(testCtx(t))
	p, err := c.Exec(ctx, "sh", &msbagent.ExecOptions{
		Args: []string{"-c", "while true; do echo x; sleep 0.01; done"},
	})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	got := 0
	for got < 5 {
		n, err := p.Stdout().Read(buf)
		if err != nil {
			t.Fatalf("reading the stream: %v", err)
		}
		got += strings.Count(string(buf[:n]), "x")
	}

	// Cancel while a read is blocked (or about to block) on the stream.
	readDone := make(chan error, 1)
	go func() {
		for {
			if _, err := p.Stdout().Read(buf); err != nil {
				readDone <- err
				return
			}
		}
	}()
	time.Sleep(50 * time.Millisecond)
	cancelAndExpectReadCancelled(t, cancel, readDone)
	if code, err := p.Wait(); code != -1 || !errors.Is(err, context.Canceled) {
		t.Errorf("Wait after cancel = %d, %v; want -1, context.Canceled", code, err)
	}

	// The same client still runs commands and file calls.
	res, err := c.Run(testCtx(t), "echo", &msbagent.ExecOptions{Args: []string{"still here"}})
	if err != nil || string(res.Stdout) != "still here\n" {
		t.Fatalf("Run after a cancelled stream = %+v, %v", res, err)
	}
	if err := c.WriteFile(testCtx(t), "/after-cancel", []byte("ok"), 0o600); err != nil {
		t.Fatalf("WriteFile after a cancelled stream: %v", err)
	}
}

func TestDeadlineEndsProcess(t *testing.T) {
	c := connect(t)
	ctx, cancel := context.WithTimeout(testCtx(t), 200*time.Millisecond)
	defer cancel()
	p, err := c.Exec(ctx, "sleep", &msbagent.ExecOptions{Args: []string{"30"}})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	code, err := p.Wait()
	if code != -1 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait = %d, %v; want -1, context.DeadlineExceeded", code, err)
	}
	if waited := time.Since(start); waited > 2*time.Second {
		t.Fatalf("Wait returned %v after the deadline", waited)
	}
}

func TestCancelledCallsDoNotDisturbTheNext(t *testing.T) {
	c := connect(t)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.ReadFile(cancelled, "/anything"); !errors.Is(err, context.Canceled) {
		t.Fatalf("ReadFile with a cancelled context = %v, want context.Canceled", err)
	}
	if _, err := c.Exec(cancelled, "true", nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Exec with a cancelled context = %v, want context.Canceled", err)
	}
	// Calls abandoned mid-flight: each is left to finish in the background.
	for i := 0; i < 20; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		go cancel()
		c.WriteFile(ctx, fmt.Sprintf("/abandoned-%d", i), []byte("x"), 0)
	}
	if err := c.WriteFile(testCtx(t), "/next", []byte("next call"), 0o644); err != nil {
		t.Fatal(err)
	}
	data, err := c.ReadFile(testCtx(t), "/next")
	if err != nil || string(data) != "next call" {
		t.Fatalf("ReadFile after cancelled calls = %q, %v", data, err)
	}
}

func TestSignal(t *testing.T) {
	c := connect(t)
	p, err := c.Exec(testCtx(t), "sleep", &msbagent.ExecOptions{Args: []string{"30"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("Signal: %v", err)
	}
	if code, err := p.Wait(); code != -1 || err != nil {
		t.Fatalf("Wait after SIGTERM = %d, %v; want -1 (killed by a signal), nil", code, err)
	}
	if err := p.Signal(syscall.SIGTERM); !errors.Is(err, msbagent.ErrClosed) {
		t.Fatalf("Signal after Wait = %v, want ErrClosed", err)
	}
}

func TestResizeTTY(t *testing.T) {
	c := connect(t)
	p, err := c.Exec(testCtx(t), "sh", &msbagent.ExecOptions{
		Args: []string{"-c", "stty size; read line; stty size"},
		TTY:  true, Rows: 24, Cols: 80,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Wait for the first size before resizing.
	var out bytes.Buffer
	buf := make([]byte, 256)
	for !strings.Contains(out.String(), "24 80") {
		n, err := p.Stdout().Read(buf)
		if err != nil {
			t.Fatalf("reading the tty: %v (so far %q)", err, out.String())
		}
		out.Write(buf[:n])
	}
	if err := p.Resize(40, 100); err != nil {
		t.Fatalf("Resize: %v", err)
	}
	if _, err := p.Stdin().Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(p.Stdout())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(rest), "40 100") {
		t.Fatalf("after Resize(40, 100) the tty printed %q", rest)
	}
	if code, err := p.Wait(); code != 0 || err != nil {
		t.Fatalf("Wait = %d, %v", code, err)
	}
}

func TestFilesystem(t *testing.T) {
	c := connect(t)
	ctx := testCtx(t)
	removeFromRelayAfter(t, "fs")
	if err := c.MkdirAll(ctx, "/fs/a/b"); err != nil {
		t.Fatalf("MkdirAll: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(relayRoot, "fs/a/b")); err != nil || !fi.IsDir() {
		t.Fatalf("Mkdir did not create the nested directory: %v", err)
	}

	big := bytes.Repeat([]byte("0123456789abcdef"), 5<<20/16) // 5 MiB: several chunks
	if err := c.WriteFile(ctx, "/fs/a/big.bin", big, 0o640); err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	onHost, err := os.ReadFile(filepath.Join(relayRoot, "fs/a/big.bin"))
	if err != nil || !bytes.Equal(onHost, big) {
		t.Fatalf("the written file holds %d bytes (%v), want %d", len(onHost), err, len(big))
	}
	back, err := c.ReadFile(ctx, "/fs/a/big.bin")
	if err != nil || !bytes.Equal(back, big) {
		t.Fatalf("ReadFile returned %d bytes (%v), want %d", len(back), err, len(big))
	}

	fi, err := c.Lstat(ctx, "/fs/a/big.bin")
	if err != nil {
		t.Fatalf("Lstat: %v", err)
	}
	if fi.Name() != "big.bin" || fi.Path() != "/fs/a/big.bin" || fi.Size() != int64(len(big)) ||
		fi.Mode() != 0o640 || fi.IsDir() {
		t.Errorf("Stat = name %q path %q size %d mode %v dir %v", fi.Name(), fi.Path(), fi.Size(), fi.Mode(), fi.IsDir())
	}
	if !fi.HasModTime() || time.Since(fi.ModTime()) > time.Minute {
		t.Errorf("Stat ModTime = %v (reported: %v), want about now", fi.ModTime(), fi.HasModTime())
	}
	if dir, err := c.Lstat(ctx, "/fs/a/b"); err != nil || !dir.IsDir() || !dir.Mode().IsDir() {
		t.Errorf("Lstat(dir) = %v, %v; want a directory", dir, err)
	}

	if err := c.WriteFile(ctx, "/fs/a/empty", nil, 0); err != nil {
		t.Fatalf("WriteFile(empty): %v", err)
	}
	if data, err := c.ReadFile(ctx, "/fs/a/empty"); err != nil || len(data) != 0 {
		t.Fatalf("ReadFile(empty) = %q, %v", data, err)
	}

	if err := c.Copy(ctx, "/fs/a/big.bin", "/fs/a/copy.bin"); err != nil {
		t.Fatalf("Copy: %v", err)
	}
	if err := c.Rename(ctx, "/fs/a/copy.bin", "/fs/a/b/moved.bin"); err != nil {
		t.Fatalf("Rename: %v", err)
	}
	if moved, err := os.ReadFile(filepath.Join(relayRoot, "fs/a/b/moved.bin")); err != nil || !bytes.Equal(moved, big) {
		t.Fatalf("copied then renamed file: %d bytes, %v", len(moved), err)
	}
	if _, err := os.Stat(filepath.Join(relayRoot, "fs/a/copy.bin")); !os.IsNotExist(err) {
		t.Fatalf("Rename left its source behind: %v", err)
	}

	entries, err := c.ReadDir(ctx, "/fs/a")
	if err != nil {
		t.Fatalf("ReadDir: %v", err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if got := strings.Join(names, ","); got != "b,big.bin,empty" {
		t.Fatalf("ReadDir names = %s, want b,big.bin,empty (sorted)", got)
	}
	bigInfo, err := entries[1].Info()
	if err != nil || !entries[0].IsDir() || !entries[0].Type().IsDir() || entries[1].Type() != 0 || bigInfo.Size() != int64(len(big)) {
		t.Errorf("ReadDir entries: b dir=%v type=%v, big.bin type=%v info=%v, %v", entries[0].IsDir(), entries[0].Type(), entries[1].Type(), bigInfo, err)
	}
	infos, err := c.ListDir(ctx, "/fs/a")
	if err != nil || len(infos) != 3 || infos[1].Path() != "/fs/a/big.bin" || infos[1].Size() != int64(len(big)) {
		t.Fatalf("ListDir = %v, %v; want 3 sorted entries with big.bin second", infos, err)
	}

	if err := c.Remove(ctx, "/fs/a/empty"); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if _, err := os.Stat(filepath.Join(relayRoot, "fs/a/empty")); !os.IsNotExist(err) {
		t.Fatalf("Remove left the file: %v", err)
	}
	if err := c.RemoveAll(ctx, "/fs/a/big.bin"); err != nil {
		t.Fatalf("RemoveAll(file): %v", err)
	}
	if _, err := os.Stat(filepath.Join(relayRoot, "fs/a/big.bin")); !os.IsNotExist(err) {
		t.Fatalf("RemoveAll left the file: %v", err)
	}
	if err := c.RemoveAll(ctx, "/fs"); err != nil {
		t.Fatalf("RemoveAll: %v", err)
	}
	if _, err := os.Stat(filepath.Join(relayRoot, "fs")); !os.IsNotExist(err) {
		t.Fatalf("RemoveAll left the tree: %v", err)
	}
	if err := c.RemoveAll(ctx, "/fs"); err != nil {
		t.Fatalf("RemoveAll of a missing path = %v, want nil as os.RemoveAll", err)
	}
}

func TestErrorsCarryStatusCodes(t *testing.T) {
	c := connect(t)
	ctx := testCtx(t)

	_, err := c.ReadFile(ctx, "/no/such/file")
	if !errors.Is(err, msbagent.ErrGuest) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("ReadFile(missing) = %v, want ErrGuest and fs.ErrNotExist", err)
	}
	var libErr *msbagent.Error
	var pathErr *fs.PathError
	if !errors.As(err, &libErr) || libErr.Code != msbagent.StatusNotFound || libErr.Errno() != int(syscall.ENOENT) || libErr.Message == "" {
		t.Fatalf("ReadFile(missing) error = %#v, want code StatusNotFound, errno ENOENT and the guest's message", err)
	}
	if !errors.As(err, &pathErr) || pathErr.Path != "/no/such/file" || (pathErr.Op != "open" && pathErr.Op != "read") {
		t.Fatalf("ReadFile(missing) error = %#v, want an *fs.PathError naming the path", err)
	}
	if !strings.Contains(err.Error(), "/no/such/file") {
		t.Errorf("the error text %q does not name the path", err)
	}
	if errors.Is(err, msbagent.ErrTimeout) || errors.Is(err, fs.ErrPermission) || errors.Is(err, fs.ErrExist) {
		t.Errorf("a missing file must not match other sentinels: %v", err)
	}
	if _, err := c.Lstat(ctx, "/no/such/file"); !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, msbagent.ErrGuest) || !errors.As(err, &pathErr) || pathErr.Op != "lstat" {
		t.Errorf("Lstat(missing) = %v, want an *fs.PathError (lstat) matching fs.ErrNotExist and ErrGuest", err)
	}
	if err := c.Remove(ctx, "/no/such/file"); !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, msbagent.ErrGuest) || !errors.As(err, &pathErr) || pathErr.Op != "remove" {
		t.Errorf("Remove(missing) = %v, want an *fs.PathError (remove) matching fs.ErrNotExist and ErrGuest", err)
	}
	var linkErr *os.LinkError
	if err := c.Rename(ctx, "/no/such/file", "/elsewhere"); !errors.Is(err, fs.ErrNotExist) || !errors.As(err, &linkErr) || linkErr.Old != "/no/such/file" || linkErr.New != "/elsewhere" {
		t.Errorf("Rename(missing) = %v, want an *os.LinkError matching fs.ErrNotExist", err)
	}
	if _, err := msbagent.Connect(ctx, filepath.Join(t.TempDir(), "nobody.sock")); errors.Is(err, msbagent.ErrGuest) || errors.As(err, &pathErr) {
		t.Errorf("a missing relay is not the guest's failure: %#v", err)
	}

	if _, err := c.Exec(ctx, "", nil); !errors.Is(err, msbagent.ErrInvalidArgument) {
		t.Errorf("Exec(\"\") = %v, want ErrInvalidArgument", err)
	}
	if _, err := c.Exec(ctx, "env", &msbagent.ExecOptions{Env: []string{"NOEQUALS"}}); !errors.Is(err, msbagent.ErrInvalidArgument) {
		t.Errorf("Exec with env entry without '=' = %v, want ErrInvalidArgument", err)
	}
	if _, err := c.Exec(ctx, "true", &msbagent.ExecOptions{Rlimits: []msbagent.Rlimit{{Resource: "bogus"}}}); !errors.Is(err, msbagent.ErrInvalidArgument) {
		t.Errorf("Exec with an unknown rlimit = %v, want ErrInvalidArgument", err)
	}
	if _, err := c.ReadFile(ctx, "/nul\x00byte"); !errors.Is(err, msbagent.ErrInvalidArgument) {
		t.Errorf("ReadFile(path with NUL) = %v, want ErrInvalidArgument", err)
	}

	if _, err := msbagent.Connect(ctx, filepath.Join(t.TempDir(), "nobody.sock")); !errors.Is(err, msbagent.ErrNotFound) {
		t.Errorf("Connect(no relay) = %v, want ErrNotFound", err)
	}

	timeout := &msbagent.Error{Code: msbagent.StatusTimeout, Message: "deadline"}
	if !errors.Is(timeout, msbagent.ErrTimeout) || !errors.Is(timeout, context.DeadlineExceeded) {
		t.Errorf("a library timeout should match ErrTimeout and context.DeadlineExceeded")
	}
	if msbagent.ErrGuest.Error() == "" || msbagent.StatusGuest.String() == "" {
		t.Errorf("status descriptions are empty")
	}
}

func TestClosedClient(t *testing.T) {
	c := connect(t)
	ctx := testCtx(t)
	p, err := c.Exec(ctx, "sleep", &msbagent.ExecOptions{Args: []string{"30"}})
	if err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(p.Stdout())
		readErr <- err
	}()
	time.Sleep(50 * time.Millisecond)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-readErr:
		if !errors.Is(err, msbagent.ErrClosed) {
			t.Errorf("a read blocked across Close returned %v, want ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("a read blocked across Close did not return")
	}
	if _, err := p.Wait(); !errors.Is(err, msbagent.ErrClosed) {
		t.Errorf("Wait after Close = %v, want ErrClosed", err)
	}

	if _, err := c.Run(ctx, "true", nil); !errors.Is(err, msbagent.ErrClosed) {
		t.Errorf("Run on a closed client = %v, want ErrClosed", err)
	}
	if _, err := c.ReadFile(ctx, "/x"); !errors.Is(err, msbagent.ErrClosed) {
		t.Errorf("ReadFile on a closed client = %v, want ErrClosed", err)
	}
	if err := c.MkdirAll(ctx, "/x"); !errors.Is(err, msbagent.ErrClosed) {
		t.Errorf("MkdirAll on a closed client = %v, want ErrClosed", err)
	}
	if err := c.Mkdir(ctx, "/x"); !errors.Is(err, msbagent.ErrClosed) {
		t.Errorf("Mkdir on a closed client = %v, want ErrClosed", err)
	}
}

func TestProcessClose(t *testing.T) {
	c := connect(t)
	p, err := c.Exec(testCtx(t), "sleep", &msbagent.ExecOptions{Args: []string{"30"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Stdout().Read(make([]byte, 1)); !errors.Is(err, msbagent.ErrClosed) {
		t.Errorf("read after Process.Close = %v, want ErrClosed", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Process.Close = %v", err)
	}
}
