//! File source: discovery, rotation, symlink loops, many files (issue 12: 4, 9, 22, 23, 25).
