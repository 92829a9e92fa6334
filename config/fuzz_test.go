package config

import (
	"reflect"
	"testing"
)

// FuzzConfigYAML: any file either fails with an error naming a key, or
// yields a configuration that, once valid, survives a YAML round trip.
func FuzzConfigYAML(f *testing.F) {
	f.Add(Example())
	f.Add([]byte(""))
	f.Add([]byte("nats:\n  url: nats://a:4222,nats://b:4222\n  stream:\n    max_age: 3d\n"))
	f.Add([]byte("log: [1, 2"))
	f.Add([]byte("transform:\n  prices: ['qwen*=0.5/1.5', 'gpt-4o=2.5/10']\n"))
	f.Add([]byte("clickhouse:\n  batch_size: -1\n"))
	f.Add([]byte("collect:\n  tokens: [a, b]\n  max_body_bytes: 8MiB\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c := Default()
		if err := decodeYAML(data, &c); err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if err := c.Validate(); err != nil {
			if ce, ok := err.(*Error); !ok || ce.Key == "" {
				t.Fatalf("validation error without a key: %v", err)
			}
			return
		}
		out, err := c.YAML()
		if err != nil {
			t.Fatalf("render a valid config: %v", err)
		}
		again := Default()
		if err := decodeYAML(out, &again); err != nil {
			t.Fatalf("re-read a rendered config: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(normalizeSlices(c), normalizeSlices(again)) {
			t.Fatalf("round trip changed the config:\nin  %+v\nout %+v\nyaml:\n%s", c, again, out)
		}
	})
}

// normalizeSlices treats nil and empty lists alike (YAML writes both as []).
func normalizeSlices(c Config) Config {
	var walk func(v reflect.Value)
	walk = func(v reflect.Value) {
		switch v.Kind() {
		case reflect.Struct:
			for i := range v.NumField() {
				walk(v.Field(i))
			}
		case reflect.Slice:
			if v.Len() == 0 && v.CanSet() {
				v.Set(reflect.Zero(v.Type()))
			}
		}
	}
	walk(reflect.ValueOf(&c).Elem())
	return c
}
