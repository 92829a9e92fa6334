//go:build !linux

package bench

import (
	"context"
	"errors"
)

func holdRealtime(context.Context, []int) (func(), error) {
	return nil, errors.New("bench proxy: --proxy-realtime needs Linux (SCHED_FIFO)")
}
