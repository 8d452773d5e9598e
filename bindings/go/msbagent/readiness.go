package msbagent

/*
#include <microsandbox_agent.h>
*/
import "C"

import (
	"io"
	"os"
	"syscall"
	"time"
	"unsafe"
)

// readinessWaiter waits for one of the library's readiness eventfds
// (readable exactly while a zero-timeout pull would find something) on Go's
// network poller, so that a blocked reader holds a goroutine, not an OS
// thread.
type readinessWaiter struct {
	// file owns this package's duplicate of the library's descriptor,
	// registered with the poller; conn waits on it.
	file *os.File
	conn syscall.RawConn
}

// newReadinessWaiter duplicates fd, which is borrowed from a library handle
// and dies with it; the duplicate lives until close.
func newReadinessWaiter(fd C.int, name string) (*readinessWaiter, error) {
	dup, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_DUPFD_CLOEXEC, 0)
	if errno != 0 {
		return nil, &Error{Code: StatusIO, Message: "duplicating the readiness descriptor: " + errno.Error()}
	}
	if err := syscall.SetNonblock(int(dup), true); err != nil {
		syscall.Close(int(dup))
		return nil, &Error{Code: StatusIO, Message: "setting the readiness descriptor non-blocking: " + err.Error()}
	}
	file := os.NewFile(dup, name)
	// A descriptor that did not join the poller refuses deadlines; waiting
	// on it would block a thread, so fail instead.
	if err := file.SetReadDeadline(time.Time{}); err != nil {
		file.Close()
		return nil, &Error{Code: StatusIO, Message: "the readiness descriptor cannot be polled: " + err.Error()}
	}
	conn, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, &Error{Code: StatusIO, Message: "the readiness descriptor cannot be polled: " + err.Error()}
	}
	return &readinessWaiter{file: file, conn: conn}, nil
}

// readinessOf asks a library handle for its readiness descriptor, through
// getFd, and prepares a waiter on it; name labels the *os.File.
func readinessOf(name string, getFd func(fd *C.int, errOut **C.msb_error) C.msb_status) (*readinessWaiter, error) {
	var fd C.int
	var libErr *C.msb_error
	if status := getFd(&fd, &libErr); status != C.MSB_OK {
		return nil, statusError(status, libErr)
	}
	return newReadinessWaiter(fd, name)
}

// pull waits until take, a pull with a zero timeout that keeps what it
// got, finds something. take returns the library's status, or a Go error
// when it could not pull at all (the handle is gone), which ends the wait.
// pullErr is what the pull came to: nil when take got an item, io.EOF at
// the stream's end, else the library's error or take's. waitErr is
// non-nil only if waiting itself failed (see wait); then nothing was
// taken.
func (w *readinessWaiter) pull(take func(errOut **C.msb_error) (C.msb_status, error)) (pullErr, waitErr error) {
	waitErr = w.wait(func() bool {
		var libErr *C.msb_error
		status, err := take(&libErr)
		switch {
		case err != nil:
			pullErr = err
		case status == C.MSB_NOTHING_YET:
			return false
		case status == C.MSB_OK:
		case status == C.MSB_ENDED:
			pullErr = io.EOF
		default:
			pullErr = statusError(status, libErr)
		}
		return true
	})
	return pullErr, waitErr
}

// takeBytes copies a chunk the library handed over into Go memory and
// frees it.
func takeBytes(buf *C.msb_bytes) []byte {
	defer C.msb_bytes_free(buf)
	return C.GoBytes(unsafe.Pointer(C.msb_bytes_data(buf)), C.int(C.msb_bytes_len(buf)))
}

// wait calls tryPull, which must pull with a zero timeout, first at once
// and then each time the descriptor turns readable, until it reports that
// it got something (a result or an end). A pull that finds nothing
// consumes nothing, so giving up the wait loses nothing. The error is
// non-nil only if waiting itself failed: after interrupt or close.
func (w *readinessWaiter) wait(tryPull func() (done bool)) error {
	return w.conn.Read(func(uintptr) bool { return tryPull() })
}

// interrupt makes the current wait, and every later one, fail at once.
func (w *readinessWaiter) interrupt() {
	_ = w.file.SetReadDeadline(time.Now())
}

func (w *readinessWaiter) close() {
	w.file.Close()
}
