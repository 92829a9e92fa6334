package replay

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/store/callsdb"
)

// MarkDirty marks every hour of [from, to) dirty in the usage rollups of db
// before a replay into ClickHouse (sinks empty or naming it): reads switch
// to those hours' per-call rows at once (exact while the calls arrive) and
// the sealer seals them again afterwards (the sink marks them again as the
// calls land).
func MarkDirty(ctx context.Context, db callsdb.Config, from, to time.Time, sinks []string, log *slog.Logger) error {
	if len(sinks) > 0 && !slices.Contains(sinks, bus.StageClickHouse) {
		return nil
	}
	conn, err := callsdb.Open(ctx, db)
	if err != nil {
		return fmt.Errorf("replay: mark the range dirty in the rollups: %w", err)
	}
	defer conn.Close()
	hours := Hours(from, to, time.Now())
	if err := callsdb.MarkDirty(ctx, conn, db.Database, db.Topology, hours, "replay", time.Now()); err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	log.Info("replay: range marked dirty in the usage rollups", "hours", len(hours))
	return nil
}
