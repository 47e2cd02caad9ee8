package throttle

// orDefault is v, or def when v is zero: what setDefaults would make of a
// field, for the Validate checks that compare fields.
func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}
