"""Keypoint design on a 3D prototype (MISC210K section 3.2): three candidate schemes, six
rendered views, scores from annotators' votes or automatic proxies, a merged, versioned schema."""
