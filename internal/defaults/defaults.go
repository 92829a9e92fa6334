// Package defaults fills in options left unset. Options are plain struct
// fields whose zero value means "not set"; a negative count, size or
// duration is as meaningless as none, so it takes the default too rather
// than being rejected.
package defaults

// Number is what IfNotPositive fills in: counts, sizes and durations.
type Number interface {
	~int | ~int8 | ~int16 | ~int32 | ~int64 |
		~uint | ~uint8 | ~uint16 | ~uint32 | ~uint64 |
		~float32 | ~float64
}

// IfNotPositive is v when v is above zero, else def.
func IfNotPositive[T Number](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}
