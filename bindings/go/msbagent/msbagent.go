// Package msbagent drives a microsandbox sandbox through its agent relay
// (the sandbox's agent.sock), using libmicrosandbox_agent through cgo.
//
// A Client is one connection; it is safe for concurrent use. Exec starts a
// guest process whose output is read through io.Readers; Run runs one to
// completion; ReadFile, WriteFile, Stat, ReadDir and friends work on the
// guest's filesystem; Open and Create stream files too large to hold in
// memory. Every call takes a context.Context: a cancelled call returns at
// once, and the connection stays usable.
//
// Errors from the library are *Error values carrying the library's status
// code; compare them with errors.Is against the Err* sentinels.
package msbagent

/*
#cgo pkg-config: microsandbox_agent
#include <stdlib.h>
#include <microsandbox_agent.h>
*/
import "C"

import (
	"context"
	"strings"
	"time"
)

// Version is the version of the libmicrosandbox_agent library in use, as
// "MAJOR.MINOR.PATCH".
func Version() string {
	return C.GoString(C.msb_version())
}

// checkString refuses strings that cannot cross as C strings: a NUL byte
// would silently cut the string short on the C side.
func checkString(what, s string) error {
	if strings.IndexByte(s, 0) >= 0 {
		return &Error{Code: StatusInvalidArgument, Message: what + " contains a NUL byte"}
	}
	return nil
}

// timeoutMs turns ctx's deadline into the library's millisecond timeout.
// Without a deadline the library waits without limit: cancellation is
// handled on the Go side.
func timeoutMs(ctx context.Context) C.int64_t {
	deadline, ok := ctx.Deadline()
	if !ok {
		return C.MSB_TIMEOUT_INFINITE
	}
	left := time.Until(deadline)
	// Round up, and never pass 0: for pulls 0 means "do not wait at all".
	ms := (left + time.Millisecond - 1) / time.Millisecond
	if ms < 1 {
		ms = 1
	}
	return C.int64_t(ms)
}

// callBlocking runs op, one library call that blocks for at most the
// timeout it is given, so that a cancelled ctx returns at once. The library
// call cannot be interrupted, so on cancellation it is left to finish on
// its own goroutine and, if it succeeded, discard (when non-nil) releases
// whatever it produced. op must own every C resource it uses (allocate and
// free its C strings itself), because it may outlive the caller.
func callBlocking(ctx context.Context, op func(timeout C.int64_t) error, discard func()) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	timeout := timeoutMs(ctx)
	if ctx.Done() == nil {
		return op(timeout)
	}
	result := make(chan error, 1)
	go func() { result <- op(timeout) }()
	select {
	case err := <-result:
		return err
	case <-ctx.Done():
		go func() {
			if err := <-result; err == nil && discard != nil {
				discard()
			}
		}()
		return ctx.Err()
	}
}
