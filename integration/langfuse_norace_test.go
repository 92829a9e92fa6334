//go:build !race

package integration

const lfRace = false
