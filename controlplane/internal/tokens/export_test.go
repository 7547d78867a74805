package tokens

// VerifiedLen is how many verified tokens is holds in its cache.
func (is *Issuer) VerifiedLen() int { return is.verified.len() }

// SetMaxVerified bounds the cache at n tokens (before is is shared).
func (is *Issuer) SetMaxVerified(n int) { is.verified.max = n }
