package settings

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func testSealer(t *testing.T) *Sealer {
	t.Helper()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	s, err := NewSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSealRoundTripAndBinding(t *testing.T) {
	s := testSealer(t)
	const secret = "sk-lf-0123456789abcdef"
	sealed, err := s.Seal(secret, "https://lf.example", "pk-lf-1")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(sealed, secret) || strings.Contains(sealed, "0123456789") {
		t.Fatalf("sealed value shows the secret: %s", sealed)
	}
	got, err := s.Open(sealed, "https://lf.example", "pk-lf-1")
	if err != nil || got != secret {
		t.Fatalf("Open = %q, %v", got, err)
	}
	again, _ := s.Seal(secret, "https://lf.example", "pk-lf-1")
	if again == sealed {
		t.Error("two seals of the same secret are equal: the nonce is not random")
	}
	// bound to host and public key: a bucket writer cannot redirect the secret
	if _, err := s.Open(sealed, "https://evil.example", "pk-lf-1"); err == nil || !strings.Contains(err.Error(), "altered") {
		t.Errorf("Open with another host: %v, want an authentication error", err)
	}
	if _, err := s.Open(sealed, "https://lf.example", "pk-lf-2"); err == nil {
		t.Error("Open with another public key succeeded")
	}
	other := testSealer(t)
	if _, err := other.Open(sealed, "https://lf.example", "pk-lf-1"); err == nil || !strings.Contains(err.Error(), "sealed under settings key id "+s.KeyID()) ||
		!strings.Contains(err.Error(), "langfuse.settings_key") {
		t.Errorf("Open with another key: %v, want the key ids and the config key named", err)
	}
	if _, err := s.Open("sk-lf-plain", "h", "p"); err == nil {
		t.Error("Open of a non-sealed value succeeded")
	}
}

func TestParseKey(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	for _, in := range []string{base64.StdEncoding.EncodeToString(key), base64.RawURLEncoding.EncodeToString(key), hex.EncodeToString(key), " " + base64.StdEncoding.EncodeToString(key) + "\n"} {
		got, err := ParseKey(in)
		if err != nil || !bytes.Equal(got, key) {
			t.Errorf("ParseKey(%q) = %x, %v", in, got, err)
		}
	}
	for _, in := range []string{"short", base64.StdEncoding.EncodeToString(key[:16]), strings.Repeat("z", 64)} {
		if _, err := ParseKey(in); err == nil {
			t.Errorf("ParseKey(%q) accepted", in)
		}
	}
	if s, err := SealerFromConfig(""); s != nil || err != nil {
		t.Errorf("empty key: %v, %v; want no sealer and no error", s, err)
	}
}

func TestStoreEncodeNeverWritesThePlainSecret(t *testing.T) {
	l := Langfuse{Host: "https://lf.example", PublicKey: "pk-lf-1", SecretKey: "sk-lf-very-secret"}
	if _, err := (&Store{}).encode(l); !errors.Is(err, ErrNoKey) || !strings.Contains(err.Error(), "langfuse.settings_key") {
		t.Fatalf("encode without a key: %v, want ErrNoKey naming the config key", err)
	}
	st := &Store{sealer: testSealer(t)}
	b, err := st.encode(l)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte("very-secret")) || bytes.Contains(b, []byte(`"secret_key"`)) {
		t.Fatalf("stored value holds the secret: %s", b)
	}
	back, err := st.decode(b)
	if err != nil || back.SecretKey != l.SecretKey || back.Host != l.Host {
		t.Fatalf("decode = %+v, %v", back, err)
	}
	if _, err := (&Store{}).decode(b); !errors.Is(err, ErrNoKey) {
		t.Errorf("decode of a sealed value without a key: %v, want ErrNoKey", err)
	}
	// a value saved in plain text by an older release is still read
	legacy := []byte(`{"host":"https://lf.example","public_key":"pk-lf-1","secret_key":"sk-lf-old"}`)
	if old, err := (&Store{}).decode(legacy); err != nil || old.SecretKey != "sk-lf-old" {
		t.Errorf("legacy value: %+v, %v", old, err)
	}
}
