package sinks

import (
	"testing"

	"github.com/callpipe/callpipe/internal/freelist"
)

// A written batch's slices go to the next batches, emptied: the next batch
// starts with no values and the old values are not pinned; Values lists the
// batch's values in order.
func TestBatchSlicesAreReusedEmptied(t *testing.T) {
	r := &Runner[*int]{spareItems: freelist.New[[]Item[*int]](spareBatches), spareValues: freelist.New[[]*int](spareBatches)}
	one, two := 1, 2
	b := r.newBatch(8)
	b.Items = append(b.Items, Item[*int]{Value: &one}, Item[*int]{Value: &two})
	vals := b.Values()
	if len(vals) != 2 || vals[0] != &one || vals[1] != &two {
		t.Fatalf("Values = %v", vals)
	}
	items := b.Items
	r.recycle(b)
	if items[0].Value != nil || vals[0] != nil || vals[1] != nil {
		t.Fatal("a recycled batch still points at its values")
	}
	next := r.newBatch(8)
	if len(next.Items) != 0 || cap(next.Items) != cap(items) || &next.Items[:1][0] != &items[0] {
		t.Fatalf("the next batch did not reuse the items: len %d cap %d", len(next.Items), cap(next.Items))
	}
	next.Items = append(next.Items, Item[*int]{Value: &two})
	if v := next.Values(); len(v) != 1 || v[0] != &two || &v[:1][0] != &vals[0] {
		t.Fatalf("the next batch's values %v did not reuse the slice", v)
	}
}
