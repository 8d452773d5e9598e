package msbagent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microsandbox/libmicrosandbox_agent/bindings/go/msbagent"
)

// expectNoGoroutinesLeft waits (briefly: a process's watcher may still be
// sending its bounded kill) for the goroutine count to fall back to
// baseline, and fails with every goroutine's stack if it does not.
func expectNoGoroutinesLeft(t *testing.T, baseline int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > baseline {
		if time.Now().After(deadline) {
			var stacks bytes.Buffer
			pprof.Lookup("goroutine").WriteTo(&stacks, 1)
			t.Fatalf("%d goroutines left after the cancelled calls returned (baseline %d):\n%s", runtime.NumGoroutine(), baseline, stacks.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cancelledMidCall runs call with a context cancelled after delay and
// checks that it returns context.Canceled within a second of that.
func cancelledMidCall(t *testing.T, what string, delay time.Duration, call func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	timer := time.AfterFunc(delay, cancel)
	defer timer.Stop()
	start := time.Now()
	err := call(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("%s cancelled mid-call returned %v, want context.Canceled", what, err)
	}
	if late := time.Since(start) - delay; late > time.Second {
		t.Errorf("%s returned %v after its cancellation", what, late)
	}
}

// deadlineEndsCall runs call with a 300 ms deadline and checks that it
// ends with a deadline error soon after.
func deadlineEndsCall(t *testing.T, what string, call func(ctx context.Context) error) {
	t.Helper()
	const deadline = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	if err := call(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("%s against a silent relay = %v, want a deadline error", what, err)
	}
	if late := time.Since(start) - deadline; late > time.Second {
		t.Errorf("%s returned %v after its deadline", what, late)
	}
}

// A relay that never answers (it stops reading after the handshake) holds
// every call: cancelled, each returns promptly, and no goroutine is left
// in a library call. Contexts here have no deadline, so nothing but the
// cancellation ends the calls.
func TestCancelledCallsToASilentRelayLeaveNothingRunning(t *testing.T) {
	silent := startFaultyRelay(t, "stop-reading")
	baseline := runtime.NumGoroutine()

	c, err := msbagent.Connect(testCtx(t), silent)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const delay = 150 * time.Millisecond
	cancelledMidCall(t, "Lstat", delay, func(ctx context.Context) error {
		_, err := c.Lstat(ctx, "/x")
		return err
	})
	cancelledMidCall(t, "ReadDir", delay, func(ctx context.Context) error {
		_, err := c.ReadDir(ctx, "/")
		return err
	})
	cancelledMidCall(t, "MkdirAll", delay, func(ctx context.Context) error {
		return c.MkdirAll(ctx, "/x")
	})
	cancelledMidCall(t, "Mkdir", delay, func(ctx context.Context) error {
		return c.Mkdir(ctx, "/x")
	})
	if c.Generation() < handleFSGeneration {
		// Reading is one request whose data is pulled on the poller.
		cancelledMidCall(t, "ReadFile", delay, func(ctx context.Context) error {
			_, err := c.ReadFile(ctx, "/x")
			return err
		})
		cancelledMidCall(t, "Open then Read", delay, func(ctx context.Context) error {
			r, err := c.Open(ctx, "/x")
			if err != nil {
				return err
			}
			defer r.Close()
			_, err = r.Read(make([]byte, 16))
			return err
		})
	} else {
		// Opening a file is a request answered with a guest handle: it is
		// made once (a repeat would leave handles open in the guest), so
		// the deadline ends it.
		deadlineEndsCall(t, "ReadFile", func(ctx context.Context) error {
			_, err := c.ReadFile(ctx, "/x")
			return err
		})
	}
	if c.Generation() >= handleFSGeneration {
		cancelledMidCall(t, "Stat", delay, func(ctx context.Context) error {
			_, err := c.Stat(ctx, "/x")
			return err
		})
		cancelledMidCall(t, "Realpath", delay, func(ctx context.Context) error {
			_, err := c.Realpath(ctx, "/x")
			return err
		})
		cancelledMidCall(t, "Chmod", delay, func(ctx context.Context) error {
			return c.Chmod(ctx, "/x", 0o600)
		})
	}
	if c.Generation() >= tcpGeneration {
		cancelledMidCall(t, "Dial", delay, func(ctx context.Context) error {
			_, err := c.Dial(ctx, "tcp", "127.0.0.1:9")
			return err
		})
	}
	if c.Generation() >= livenessGeneration {
		cancelledMidCall(t, "Ping", delay, func(ctx context.Context) error {
			return c.Ping(ctx)
		})
	}
	cancelledMidCall(t, "Exec then Wait", delay, func(ctx context.Context) error {
		p, err := c.Exec(ctx, "sleep", &msbagent.ExecOptions{Args: []string{"30"}})
		if err != nil {
			return err
		}
		_, err = p.Wait()
		return err
	})
	// A change is sent once and waited for up to the deadline, never
	// abandoned on a goroutine.
	deadlineEndsCall(t, "Remove", func(ctx context.Context) error {
		return c.Remove(ctx, "/x")
	})
	c.Close()
	expectNoGoroutinesLeft(t, baseline)
}

// Connecting to a relay that never sends its handshake: a cancelled
// Connect returns promptly and leaves no dial running.
func TestCancelledConnectLeavesNothingRunning(t *testing.T) {
	silent := startFaultyRelay(t, "no-handshake")
	baseline := runtime.NumGoroutine()
	for _, delay := range []time.Duration{0, 50 * time.Millisecond, 400 * time.Millisecond} {
		cancelledMidCall(t, fmt.Sprintf("Connect cancelled after %v", delay), delay, func(ctx context.Context) error {
			c, err := msbagent.Connect(ctx, silent)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	expectNoGoroutinesLeft(t, baseline)
}

// Many calls of every kind, cancelled at random points against a working
// relay: whatever each returns, none leaves a goroutine behind, and the
// client stays usable.
func TestCancellationStormLeavesNothingRunning(t *testing.T) {
	c := connect(t)
	if err := c.WriteFile(testCtx(t), "/storm-src", bytes.Repeat([]byte("s"), 3<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	baseline := runtime.NumGoroutine()
	calls := []func(ctx context.Context, i int) error{
		func(ctx context.Context, i int) error {
			_, err := c.ReadFile(ctx, "/storm-src")
			return err
		},
		func(ctx context.Context, i int) error {
			return c.WriteFile(ctx, fmt.Sprintf("/storm-%d", i), bytes.Repeat([]byte("w"), 2<<20), 0)
		},
		func(ctx context.Context, i int) error {
			_, err := c.Lstat(ctx, "/storm-src")
			return err
		},
		func(ctx context.Context, i int) error {
			_, err := c.ReadDir(ctx, "/")
			return err
		},
		func(ctx context.Context, i int) error {
			_, err := c.Run(ctx, "sh", &msbagent.ExecOptions{Args: []string{"-c", "head -c 200000 /dev/zero; sleep 0.05"}})
			return err
		},
		func(ctx context.Context, i int) error {
			p, err := c.Exec(ctx, "cat", nil)
			if err != nil {
				return err
			}
			defer p.Close()
			go func() {
				p.Stdin().Write(bytes.Repeat([]byte("i"), 1<<20))
				p.Stdin().Close()
			}()
			_, err = io.Copy(io.Discard, p.Stdout())
			return err
		},
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	unexpected := []string{}
	for round := 0; round < 4; round++ {
		for i, call := range calls {
			wg.Add(1)
			go func(round, i int, call func(context.Context, int) error) {
				defer wg.Done()
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(time.Duration(i*7+round*3)*time.Millisecond, cancel)
				err := call(ctx, i)
				// Finishing before the cancellation is fine; any other
				// failure is not.
				if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, msbagent.ErrClosed) {
					mu.Lock()
					unexpected = append(unexpected, err.Error())
					mu.Unlock()
				}
			}(round, i, call)
		}
	}
	wg.Wait()
	if len(unexpected) > 0 {
		t.Errorf("cancelled calls failed otherwise: %s", strings.Join(unexpected, "; "))
	}
	expectNoGoroutinesLeft(t, baseline)
	res, err := c.Run(testCtx(t), "echo", &msbagent.ExecOptions{Args: []string{"after the storm"}})
	if err != nil || string(res.Stdout) != "after the storm\n" {
		t.Fatalf("Run after the cancelled calls = %+v, %v", res, err)
	}
}
