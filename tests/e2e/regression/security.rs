//! Control plane, transforms, file modes (issue 12: 13, 14, 18, 19, 20, 25).
