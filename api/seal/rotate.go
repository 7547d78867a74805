package seal

import "time"

const rotateDomain = "aegis-edge/v1/rotate-new-key-proof-of-possession"

// RotateNewKeyMessage is what the NEW key signs in a rotation (proof of possession).
// It names the old key too, so a signature made for rotating away from one key can
// never authorize a rotation away from another, and the rotation id, so a captured
// request cannot be replayed under a fresh id.
func RotateNewKeyMessage(rotationID, nodeID string, oldPublicKey, newPublicKey []byte, at time.Time) []byte {
	bl := newBuilder(rotateDomain)
	bl.str(rotationID)
	bl.str(nodeID)
	bl.bytes(oldPublicKey)
	bl.bytes(newPublicKey)
	bl.u64(uint64(at.UnixMilli()))
	return bl.b
}
