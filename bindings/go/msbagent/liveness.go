package msbagent

/*
#include <microsandbox_agent.h>
*/
import "C"

import "context"

// Ping checks that the sandbox's agent answers. It does not count as
// activity for the sandbox's idle timer. It needs protocol generation 6
// (0.6.4 and later): older sandboxes give ErrUnsupported.
func (c *Client) Ping(ctx context.Context) error {
	// A ping changes nothing, so an unanswered one may be sent again.
	return c.call(ctx, callSliced, func(h *C.msb_client, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		return C.msb_client_ping(h, timeout, errOut)
	})
}

// Touch marks the sandbox as active, restarting its idle timer, and returns
// the agent's activity sequence number (it grows with every activity). It
// needs protocol generation 6 (0.6.4 and later): older sandboxes give
// ErrUnsupported.
func (c *Client) Touch(ctx context.Context) (uint64, error) {
	var seq C.uint64_t
	// Touching twice is touching: an unanswered touch may be sent again.
	err := c.call(ctx, callSliced, func(h *C.msb_client, timeout C.int64_t, errOut **C.msb_error) C.msb_status {
		return C.msb_client_touch(h, timeout, &seq, errOut)
	})
	if err != nil {
		return 0, err
	}
	return uint64(seq), nil
}
