;; Hostile test module: imports `dataweaver:hostile/secrets`, which no agent provides.
(module
  (import "dataweaver:hostile/secrets@0.1.0" "get" (func $get (result i32)))
  ;;PRELUDE
  (func (export "dataweaver:transform/transformer@0.1.0#process") (param i32 i32) (result i32)
    (drop (call $get))
    (unreachable))
)
