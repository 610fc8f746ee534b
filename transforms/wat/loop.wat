;; Hostile test module: `process` never returns.
(module
  ;;PRELUDE
  (func (export "dataweaver:transform/transformer@0.1.0#process") (param i32 i32) (result i32)
    (loop $forever (br $forever))
    (unreachable))
)
