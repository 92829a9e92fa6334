package capture

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/callpipe/callpipe/schema"
)

// Payload modes (schema.Capture.Mode).
const (
	Full      = schema.CaptureFull      // keep input and output
	Truncated = schema.CaptureTruncated // keep at most MaxChars characters of each text
	None      = schema.CaptureNone      // drop input and output (counts, model, user... stay)
)

// DefaultMasks are applied unless disabled: e-mail addresses, phone
// numbers and API-key-like strings.
var DefaultMasks = []string{
	`[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}`,
	`\+?\(?\d{1,4}\)?[\s.\-]?\(?\d{2,4}\)?[\s.\-]?\d{3,4}[\s.\-]?\d{3,4}`,
	`\b(?:sk|pk|rk|xf|api|key)[-_][A-Za-z0-9_\-]{16,}`,
}

// Mask replaces what a mask matched.
const Mask = "[REDACTED]"

// DefaultMaxChars is the characters kept of each text in truncated mode
// unless configured.
const DefaultMaxChars = 2000

// Counter returns a raw event's input and output tokens as normalize counts
// them (the reported usage when valid, the rest counted with the
// tokenizer), and whether any count was estimated. The edge calls it before
// it drops a payload.
type Counter func(ev *schema.Event) (in, out int64, estimated bool)

// Options configure a Policy (the capture section of the configuration).
type Options struct {
	Payloads string   // default mode: full, truncated or none
	Models   []string // per-model modes, PATTERN=MODE (glob over the lower-cased model name), first match wins
	// Users are per-user modes, PATTERN=MODE (glob over the lower-cased
	// user the call names: the event's user field), first match wins. When
	// a model rule and a user rule both match, the stricter mode wins.
	Users    []string
	MaxChars int      // characters kept of each text in truncated mode (DefaultMaxChars)
	Masks    []string // regular expressions replaced by Mask in payloads, error and metadata
	// Count counts the tokens of an event whose payload the edge drops
	// (mode none). Nil: the edge keeps only the usage the event reports.
	Count Counter
}

// Policy applies the payload mode and the masks. A nil *Policy applies
// nothing. It is safe for concurrent use.
type Policy struct {
	mode     string
	models   []rule
	users    []rule
	maxChars int
	masks    []mask
	maskSet  string
	count    Counter
}

type rule struct{ pattern, mode string }

// mask is a regular expression and, for the default masks, a cheap test
// that rules a match out (most payloads hold no e-mail address).
type mask struct {
	re       *regexp.Regexp
	possible *maskFilter
}

type maskFilter struct {
	str   func(string) bool
	bytes func([]byte) bool
}

func filterOf[F func(string) bool, G func([]byte) bool](f F, g G) *maskFilter {
	return &maskFilter{str: f, bytes: g}
}

var defaultMaskFilters = map[string]*maskFilter{
	DefaultMasks[0]: filterOf(func(s string) bool { return strings.IndexByte(s, '@') >= 0 },
		func(b []byte) bool { return bytes.IndexByte(b, '@') >= 0 }),
	DefaultMasks[1]: filterOf(hasDigitRun[string], hasDigitRun[[]byte]),
	DefaultMasks[2]: filterOf(func(s string) bool { return hasKeyPrefix(s, strings.IndexByte) },
		func(b []byte) bool { return hasKeyPrefix(b, bytes.IndexByte) }),
}

// hasDigitRun reports whether b holds 7 digits separated only by phone
// punctuation.
func hasDigitRun[T ~string | ~[]byte](b T) bool {
	n := 0
	for i := 0; i < len(b); i++ {
		// Outside a run, 8 bytes without a digit cannot start one: skip
		// them a word at a time (most text has few digits).
		for n == 0 && i+8 <= len(b) && !hasDigit(load8(b, i)) {
			i += 8
		}
		if i >= len(b) {
			break
		}
		switch phoneClass[b[i]] {
		case phoneDigit:
			if n++; n >= 7 {
				return true
			}
		case phoneOther:
			n = 0
		}
	}
	return false
}

// load8 reads b[i:i+8] as a little-endian word.
func load8[T ~string | ~[]byte](b T, i int) uint64 {
	_ = b[i+7]
	return uint64(b[i]) | uint64(b[i+1])<<8 | uint64(b[i+2])<<16 | uint64(b[i+3])<<24 |
		uint64(b[i+4])<<32 | uint64(b[i+5])<<40 | uint64(b[i+6])<<48 | uint64(b[i+7])<<56
}

// hasDigit reports whether any byte of x is an ASCII digit: the "has a
// byte between m and n" word test (bytes above 0x7f never count).
func hasDigit(x uint64) bool {
	const l1, l127, l128 = 0x0101010101010101, 0x7f7f7f7f7f7f7f7f, 0x8080808080808080
	const m, n = '0' - 1, '9' + 1
	y := x & l127
	return (l1*(127+n)-y)&^x&(y+l1*(127-m))&l128 != 0
}

// phoneClass sorts bytes for hasDigitRun: a table lookup instead of six
// comparisons per byte of text.
var phoneClass = func() (t [256]uint8) {
	for c := '0'; c <= '9'; c++ {
		t[c] = phoneDigit
	}
	for _, c := range " -.()+" {
		t[c] = phonePunct
	}
	return t
}()

const (
	phoneOther = iota
	phoneDigit
	phonePunct
)

// hasKeyPrefix reports whether b holds sk-, pk-, rk-, xf-, api- or key-
// (or with _), the start of the default API-key mask. It visits only the
// dashes and underscores, found with index (a vectorised IndexByte).
func hasKeyPrefix[T ~string | ~[]byte](b T, index func(T, byte) int) bool {
	for _, sep := range []byte{'-', '_'} {
		for from := 0; ; {
			j := index(b[from:], sep)
			if j < 0 {
				break
			}
			i := from + j
			from = i + 1
			if i < 2 {
				continue
			}
			p, q := b[i-2], b[i-1]
			switch {
			case q == 'k' && (p == 's' || p == 'p' || p == 'r'), p == 'x' && q == 'f',
				i >= 3 && b[i-3] == 'a' && p == 'p' && q == 'i', i >= 3 && b[i-3] == 'k' && p == 'e' && q == 'y':
				return true
			}
		}
	}
	return false
}

// New validates o. Errors name the option and the value at fault.
func New(o Options) (*Policy, error) {
	p := &Policy{mode: o.Payloads, maxChars: o.MaxChars, count: o.Count}
	if p.mode == "" {
		p.mode = Full
	}
	if p.maxChars <= 0 {
		p.maxChars = DefaultMaxChars
	}
	if !validMode(p.mode) {
		return nil, fmt.Errorf("payloads %q: want full, truncated or none", p.mode)
	}
	var err error
	if p.models, err = parseRules("payloads_models", o.Models); err != nil {
		return nil, err
	}
	if p.users, err = parseRules("payloads_users", o.Users); err != nil {
		return nil, err
	}
	for _, m := range o.Masks {
		re, err := regexp.Compile(m)
		if err != nil {
			return nil, fmt.Errorf("masks %q: %w", m, err)
		}
		p.masks = append(p.masks, mask{re: re, possible: defaultMaskFilters[m]})
	}
	p.maskSet = MaskSetVersion(o.Masks)
	return p, nil
}

func validMode(m string) bool { return m == Full || m == Truncated || m == None }

func parseRules(key string, list []string) ([]rule, error) {
	var out []rule
	for _, r := range list {
		pat, mode, ok := strings.Cut(r, "=")
		pat, mode = strings.ToLower(strings.TrimSpace(pat)), strings.TrimSpace(mode)
		if _, err := path.Match(pat, ""); !ok || pat == "" || err != nil || !validMode(mode) {
			return nil, fmt.Errorf("%s %q: want PATTERN=full|truncated|none", key, r)
		}
		out = append(out, rule{pat, mode})
	}
	return out, nil
}

// MaskSetVersion is the version of a mask set: the first 12 hex digits of
// the SHA-256 of its patterns, one per line, in order. The same masks give
// the same version in every process.
func MaskSetVersion(masks []string) string {
	sum := sha256.Sum256([]byte(strings.Join(masks, "\n")))
	return hex.EncodeToString(sum[:6])
}

// MaskSet is the version of the policy's masks.
func (p *Policy) MaskSet() string { return p.maskSet }

// Redacts reports whether the policy may change some call's request or
// response (a mode other than full, or a mask): the edge then needs a
// Counter to keep exact usage.
func (p *Policy) Redacts() bool {
	if p == nil {
		return false
	}
	if p.mode != Full || len(p.masks) > 0 {
		return true
	}
	for _, r := range append(append([]rule(nil), p.models...), p.users...) {
		if r.mode != Full {
			return true
		}
	}
	return false
}

// strictness orders the modes: a larger value keeps less.
func strictness(mode string) int {
	switch mode {
	case None:
		return 2
	case Truncated:
		return 1
	}
	return 0
}

// Stricter returns the mode of a and b that keeps less.
func Stricter(a, b string) string {
	if strictness(b) > strictness(a) {
		return b
	}
	return a
}

func match(rules []rule, name string) (string, bool) {
	n := strings.ToLower(name)
	for _, r := range rules {
		if ok, _ := path.Match(r.pattern, n); ok {
			return r.mode, true
		}
	}
	return "", false
}

// Mode returns the payload mode of a call to model by user: the first
// matching model rule and the first matching user rule, the stricter when
// both match, else the default.
func (p *Policy) Mode(model, user string) string {
	m, byModel := match(p.models, model)
	u, byUser := "", false
	if user != "" {
		u, byUser = match(p.users, user)
	}
	switch {
	case byModel && byUser:
		return Stricter(m, u)
	case byModel:
		return m
	case byUser:
		return u
	}
	return p.mode
}

// Event applies the policy to a raw event before it is published: mode none
// drops request and response, truncated cuts every string inside them to
// MaxChars characters, and the masks apply to request, response, error and
// metadata. When that changes the request or response, the event's tokens
// are taken first (the Counter: reported usage, else counted on the whole
// text) and carried in its usage, so its counts are those normalize would
// have found. It records the policy in ev.Capture, replacing whatever the
// producer put there.
func (p *Policy) Event(ev *schema.Event) {
	if p == nil {
		return
	}
	mode := p.Mode(ev.Model, ev.User)
	counted := ev.Capture != nil && ev.Capture.Counted && usageComplete(ev.Usage)
	req, resp := ev.Request, ev.Response
	switch mode {
	case None:
		req, resp = nil, nil
	case Truncated:
		req, resp = truncateStrings(req, p.maxChars), truncateStrings(resp, p.maxChars)
	}
	req, resp = p.maskJSON(req), p.maskJSON(resp)
	if p.count != nil && (!bytes.Equal(req, ev.Request) || !bytes.Equal(resp, ev.Response)) {
		in, out, estimated := p.count(ev)
		total := in + out
		ev.Usage = &schema.Usage{PromptTokens: &in, CompletionTokens: &out, TotalTokens: &total}
		counted = estimated
	}
	ev.Request, ev.Response = req, resp
	ev.Error = p.maskString(ev.Error)
	for k, v := range ev.Metadata {
		ev.Metadata[k] = p.maskJSON(v)
	}
	ev.Capture = &schema.Capture{Mode: mode, MaskSet: p.maskSet, Counted: counted}
}

func usageComplete(u *schema.Usage) bool {
	return u != nil && u.PromptTokens != nil && u.CompletionTokens != nil && u.TotalTokens != nil
}

// Call applies the policy to a normalized call, in place, after its tokens
// were counted; user is the user its event named (ev.User). edge is the
// capture record of that event (nil when its publisher applied no policy):
// the call records the stricter mode of the two passes, and both mask sets
// when they differ. A c.Capture already set is where the record is
// written (storage the caller allocated with the call); c.Capture is nil
// after Call when there is no record.
func (p *Policy) Call(c *schema.Call, user string, edge *schema.Capture) {
	rec := c.Capture
	c.Capture = nil
	if rec == nil && (p != nil || edge != nil) {
		rec = new(schema.Capture)
	}
	if p == nil {
		if edge != nil {
			*rec = *edge
			c.Capture = rec
		}
		return
	}
	mode := p.Mode(c.Model, user)
	switch mode {
	case None:
		c.InputText, c.OutputText, c.Input, c.Output = "", "", nil, nil
	case Truncated:
		c.InputText, c.OutputText = truncateChars(c.InputText, p.maxChars), truncateChars(c.OutputText, p.maxChars)
		c.Input, c.Output = p.truncateJSON(c.Input, c.InputText), p.truncateJSON(c.Output, c.OutputText)
	}
	if len(p.masks) > 0 {
		c.InputText, c.OutputText = p.maskString(c.InputText), p.maskString(c.OutputText)
		c.Error = p.maskString(c.Error)
		c.Input, c.Output = p.maskJSON(c.Input), p.maskJSON(c.Output)
		for k, v := range c.Metadata {
			c.Metadata[k] = p.maskJSON(v)
		}
	}
	*rec = schema.Capture{Mode: mode, MaskSet: p.maskSet}
	if edge != nil {
		rec.Mode, rec.Counted = Stricter(edge.Mode, mode), edge.Counted
		if edge.MaskSet != p.maskSet {
			rec.MaskSet = edge.MaskSet + "+" + p.maskSet
		}
	}
	c.Capture = rec
}

// truncateStrings cuts every string value inside the JSON value raw to n
// characters (plus "…"), in place of the bytes: the structure, key order
// and everything else stay as they were. A string of at most n bytes is
// never touched, so applying it twice changes nothing more.
func truncateStrings(raw json.RawMessage, n int) json.RawMessage {
	var out []byte
	last := 0
	for i := 0; i < len(raw); i++ {
		if raw[i] != '"' {
			continue
		}
		j := stringEnd(raw, i)
		if j >= len(raw) {
			break // not JSON; left as it is
		}
		lit := raw[i : j+1]
		k := j + 1
		for k < len(raw) && (raw[k] == ' ' || raw[k] == '\t' || raw[k] == '\n' || raw[k] == '\r') {
			k++
		}
		isKey := k < len(raw) && raw[k] == ':'
		if !isKey && len(lit)-2 > n {
			var s string
			if json.Unmarshal(lit, &s) == nil {
				if cut := truncateChars(s, n); cut != s {
					out = append(out, raw[last:i]...)
					out = schema.AppendJSONString(out, cut)
					last = j + 1
				}
			}
		}
		i = j
	}
	if out == nil {
		return raw
	}
	return append(out, raw[last:]...)
}

// truncateJSON keeps a structured payload that fits, else replaces it by
// its truncated text.
func (p *Policy) truncateJSON(raw json.RawMessage, text string) json.RawMessage {
	if utf8.RuneCount(raw) <= p.maxChars {
		return raw
	}
	return mustJSON(map[string]any{"truncated": true, "text": text})
}

func truncateChars(s string, n int) string {
	if cut := schema.ClipChars(s, n); len(cut) < len(s) {
		return cut + "…"
	}
	return s
}

func (p *Policy) maskString(s string) string {
	for _, m := range p.masks {
		if s == "" || (m.possible != nil && !m.possible.str(s)) {
			continue
		}
		if m.re.MatchString(s) {
			s = m.re.ReplaceAllLiteralString(s, Mask)
		}
	}
	return s
}

// maskJSON masks the strings of a JSON value. Masking the text of each
// string literal is the fast path (numbers are not text: an embedding's
// floats or a `created` timestamp are never scanned); when that would break
// the JSON (a match across an escape), the value is decoded and only its
// strings are masked. A value with nothing to mask is returned as it came,
// byte for byte, so that callers can tell that nothing was redacted.
func (p *Policy) maskJSON(raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 {
		return raw
	}
	out := []byte(raw)
	changed := false
	for _, m := range p.masks {
		if m.possible != nil && !m.possible.bytes(out) {
			continue
		}
		if masked, ok := maskStrings(out, m); ok {
			out, changed = masked, true
		}
	}
	if !changed {
		return raw
	}
	// an escape cut by a match (\u12[REDACTED]) breaks the JSON or the text
	if json.Valid(out) && !bytes.Contains(out, []byte(`\`+Mask)) {
		return out
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber() // numbers stay exactly as they were
	if dec.Decode(&v) != nil {
		return mustJSON(Mask)
	}
	v, changed = p.maskValue(v)
	if !changed {
		return raw
	}
	return mustJSON(v)
}

// stringEnd is the index of the quote closing the JSON string literal that
// opens at b[i], or len(b) or more when b ends inside it.
func stringEnd(b []byte, i int) int {
	j := i + 1
	for j < len(b) && b[j] != '"' {
		if b[j] == '\\' {
			j++
		}
		j++
	}
	return j
}

// maskStrings replaces m's matches inside the string literals of the JSON
// text b (outside a string, a quote always opens one) by Mask; it reports
// whether there were any.
func maskStrings(b []byte, m mask) ([]byte, bool) {
	var out []byte
	last := 0
	for i := 0; i < len(b); i++ {
		if b[i] != '"' {
			continue
		}
		j := min(stringEnd(b, i), len(b))
		if str := b[i+1 : j]; len(str) > 0 && (m.possible == nil || m.possible.bytes(str)) {
			for _, loc := range m.re.FindAllIndex(str, -1) {
				out = append(out, b[last:i+1+loc[0]]...)
				out = append(out, Mask...)
				last = i + 1 + loc[1]
			}
		}
		i = j
	}
	if out == nil {
		return b, false
	}
	return append(out, b[last:]...), true
}

// maskValue masks the strings of a decoded JSON value in place and reports
// whether any changed.
func (p *Policy) maskValue(v any) (any, bool) {
	switch x := v.(type) {
	case string:
		m := p.maskString(x)
		return m, m != x
	case []any:
		changed := false
		for i := range x {
			var c bool
			x[i], c = p.maskValue(x[i])
			changed = changed || c
		}
		return x, changed
	case map[string]any:
		changed := false
		for k, e := range x {
			var c bool
			x[k], c = p.maskValue(e)
			changed = changed || c
		}
		return x, changed
	}
	return v, false
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil { // not reached: v holds only decoded JSON values
		return json.RawMessage(`"` + Mask + `"`)
	}
	return b
}
