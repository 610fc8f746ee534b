;; Hostile test module: `process` grows memory by 1 MiB at a time, forever.
(module
  ;;PRELUDE
  (func (export "dataweaver:transform/transformer@0.1.0#process") (param i32 i32) (result i32)
    (loop $more
      (drop (memory.grow (i32.const 16)))
      (br $more))
    (unreachable))
)
