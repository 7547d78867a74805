package sqlite

// Queued is how many callers wait for the writer, so tests can line up a batch.
func (s *Store) Queued() int { return int(s.gc.waiting.Load()) }
