//go:build !unix

package spool

import "os"

// Without flock, exclusive use of a spool directory is up to the operator.
func lockFile(*os.File) error { return nil }

func unlockFile(*os.File) {}
