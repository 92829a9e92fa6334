package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"reflect"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// DefaultFile is read when --config is not given and the file exists.
const DefaultFile = "callpipe.yaml"

// envAliases are the Langfuse SDK's variable names; CALLPIPE_LANGFUSE_* wins over them.
var envAliases = map[string][]string{
	"langfuse.host":       {"LANGFUSE_BASE_URL", "LANGFUSE_HOST"},
	"langfuse.public_key": {"LANGFUSE_PUBLIC_KEY"},
	"langfuse.secret_key": {"LANGFUSE_SECRET_KEY"},
}

// leaf is one settable key of Config.
type leaf struct {
	key    string // dotted, e.g. nats.stream.max_age
	doc    string
	secret bool
	value  reflect.Value
}

func (l leaf) envName() string {
	return "CALLPIPE_" + strings.ToUpper(strings.ReplaceAll(l.key, ".", "_"))
}

func leaves(c *Config) []leaf {
	var out []leaf
	var walk func(v reflect.Value, prefix string)
	walk = func(v reflect.Value, prefix string) {
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			key := prefix + strings.Split(f.Tag.Get("yaml"), ",")[0]
			fv := v.Field(i)
			if f.Type.Kind() == reflect.Struct {
				walk(fv, key+".")
				continue
			}
			out = append(out, leaf{key: key, doc: f.Tag.Get("doc"), secret: f.Tag.Get("secret") == "true", value: fv})
		}
	}
	walk(reflect.ValueOf(c).Elem(), "")
	return out
}

// set parses s into the leaf, naming the key and what is allowed on failure.
func (l leaf) set(s string) error {
	bad := func(allowed string) error { return &Error{Key: l.key, Value: s, Allowed: allowed} }
	switch p := l.value.Addr().Interface().(type) {
	case *Duration:
		if err := p.Set(s); err != nil {
			return bad(err.Error())
		}
	case *ByteSize:
		if err := p.Set(s); err != nil {
			return bad(err.Error())
		}
	case *string:
		*p = s
	case *bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return bad("must be true or false")
		}
		*p = b
	case *int:
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return bad("must be an integer")
		}
		*p = n
	case *[]string:
		*p = nil
		for _, part := range strings.Split(s, ",") {
			if part = strings.TrimSpace(part); part != "" {
				*p = append(*p, part)
			}
		}
	default:
		panic("config: unsupported leaf type for " + l.key)
	}
	return nil
}

// RegisterFlags adds a --<key> flag for every leaf, e.g. --nats.url.
func RegisterFlags(fs *pflag.FlagSet) {
	d := Default()
	for _, l := range leaves(&d) {
		f := fs.VarPF(&stringValue{}, l.key, "", l.doc)
		f.Hidden = true // dozens of keys would drown every command's help; `config example` lists them
		if l.value.Kind() == reflect.Bool {
			f.NoOptDefVal = "true"
		}
	}
}

type stringValue struct{ s string }

func (v *stringValue) String() string     { return v.s }
func (v *stringValue) Set(s string) error { v.s = s; return nil }
func (v *stringValue) Type() string       { return "value" }

// Sources says where Load reads from. Aliases maps a command's short flag
// (e.g. "listen") to the key it sets (e.g. "collect.listen").
type Sources struct {
	File    string // "" means DefaultFile when it exists
	Getenv  func(string) string
	Flags   *pflag.FlagSet
	Aliases map[string]string
}

// Load builds the effective configuration: defaults < file < env < flags.
func Load(src Sources) (*Config, error) {
	c := Default()
	path, explicit := src.File, src.File != ""
	if !explicit {
		path = DefaultFile
	}
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := decodeYAML(data, &c); err != nil {
			return nil, fmt.Errorf("config file %s: %w", path, err)
		}
	case explicit || !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("config file: %w", err)
	}
	getenv := src.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	byKey := map[string]leaf{}
	for _, l := range leaves(&c) {
		byKey[l.key] = l
		v := getenv(l.envName())
		for _, alias := range envAliases[l.key] {
			if v == "" {
				v = getenv(alias)
			}
		}
		if v != "" {
			if err := l.set(v); err != nil {
				return nil, err
			}
		}
	}
	if src.Flags != nil {
		var ferr error
		src.Flags.Visit(func(f *pflag.Flag) {
			key := f.Name
			if k, ok := src.Aliases[f.Name]; ok {
				key = k
			}
			if l, ok := byKey[key]; ok && ferr == nil {
				ferr = l.set(f.Value.String())
			}
		})
		if ferr != nil {
			return nil, ferr
		}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// decodeYAML applies the file through the same setters as env and flags, so
// every error names the dotted key, and unknown keys are refused.
func decodeYAML(data []byte, c *Config) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return err
	}
	if len(doc.Content) == 0 {
		return nil // empty file: defaults
	}
	byKey := map[string]leaf{}
	sections := map[string]bool{}
	for _, l := range leaves(c) {
		byKey[l.key] = l
		parts := strings.Split(l.key, ".")
		for i := 1; i < len(parts); i++ {
			sections[strings.Join(parts[:i], ".")] = true
		}
	}
	var walk func(n *yaml.Node, prefix string) error
	walk = func(n *yaml.Node, prefix string) error {
		if n.Kind != yaml.MappingNode {
			return &Error{Key: strings.TrimSuffix(prefix, "."), Value: n.Value, Allowed: fmt.Sprintf("line %d: must be a mapping", n.Line)}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := prefix+n.Content[i].Value, n.Content[i+1]
			if sections[key] {
				if err := walk(val, key+"."); err != nil {
					return err
				}
				continue
			}
			l, ok := byKey[key]
			if !ok {
				return &Error{Key: key, Value: val.Value, Allowed: fmt.Sprintf("line %d: unknown key", n.Content[i].Line)}
			}
			switch {
			case val.Kind == yaml.SequenceNode && l.value.Kind() == reflect.Slice:
				items := make([]string, 0, len(val.Content))
				for _, item := range val.Content {
					items = append(items, item.Value)
				}
				if err := l.set(strings.Join(items, ",")); err != nil {
					return err
				}
			case val.Kind == yaml.ScalarNode:
				if val.Tag == "!!null" {
					continue
				}
				if err := l.set(val.Value); err != nil {
					return err
				}
			default:
				return &Error{Key: key, Value: val.Value, Allowed: fmt.Sprintf("line %d: must be a single value", val.Line)}
			}
		}
		return nil
	}
	return walk(doc.Content[0], "")
}

func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

func (b ByteSize) MarshalYAML() (any, error) { return b.String(), nil }

// Masked returns a copy with every secret replaced, for printing.
func (c *Config) Masked() *Config {
	m := *c
	for _, l := range leaves(&m) {
		if !l.secret {
			continue
		}
		switch p := l.value.Addr().Interface().(type) {
		case *string:
			if *p != "" {
				*p = "********"
			}
		case *[]string:
			// a fresh slice: the copy shares c's backing array
			*p = append([]string(nil), (*p)...)
			for i := range *p {
				(*p)[i] = "********"
			}
		}
	}
	return &m
}

// YAML renders the configuration as YAML.
func (c Config) YAML() ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, err
	}
	return buf.Bytes(), enc.Close()
}

// Example renders the documented example file: every key, its default and
// its environment variable.
func Example() []byte {
	d := Default()
	var buf bytes.Buffer
	buf.WriteString("# callpipe configuration. Every key shows its default.\n")
	buf.WriteString("# Each key can be overridden by the environment variable shown and by the flag --<section>.<key>.\n")
	var section []string
	for _, l := range leaves(&d) {
		parts := strings.Split(l.key, ".")
		for i := 0; i < len(parts)-1; i++ {
			if i < len(section) && section[i] == parts[i] {
				continue
			}
			section = append(section[:i], parts[i])
			if i == 0 {
				buf.WriteString("\n")
			}
			fmt.Fprintf(&buf, "%s%s:\n", strings.Repeat("  ", i), parts[i])
		}
		section = section[:len(parts)-1]
		indent := strings.Repeat("  ", len(parts)-1)
		fmt.Fprintf(&buf, "%s# %s (%s)\n", indent, l.doc, l.envName())
		fmt.Fprintf(&buf, "%s%s: %s\n", indent, parts[len(parts)-1], yamlScalar(l.value))
	}
	return buf.Bytes()
}

func yamlScalar(v reflect.Value) string {
	switch x := v.Interface().(type) {
	case []string:
		if len(x) == 0 {
			return "[]"
		}
		return "[" + strings.Join(x, ", ") + "]"
	case string:
		return strconv.Quote(x)
	default:
		return fmt.Sprint(x)
	}
}
