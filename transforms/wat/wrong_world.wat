;; Hostile test module: a component of another world (exports `run`, no transformer).
(module
  (memory (export "memory") 1)
  (func (export "run") (result i32) (i32.const 42))
)
