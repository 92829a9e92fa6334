package config

import (
	"strings"
	"testing"
)

func TestClickHouseAddrList(t *testing.T) {
	for _, addr := range []string{"", "127.0.0.1:9000", "a:9000,b:9000", "a:9000, b:9001 ,c:9002"} {
		c := Default()
		c.ClickHouse.Addr = addr
		if err := c.Validate(); err != nil {
			t.Errorf("clickhouse.addr %q: %v", addr, err)
		}
	}
	for _, addr := range []string{"a", "a:9000,", "a:9000,b", ",a:9000"} {
		c := Default()
		c.ClickHouse.Addr = addr
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), "clickhouse.addr") {
			t.Errorf("clickhouse.addr %q: want an error naming the key, got %v", addr, err)
		}
	}
}
