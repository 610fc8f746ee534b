;; Hostile test module: `process` returns 2,000 records whose payloads all point at the same
;; 32 KiB of its memory. The guest holds 0.2 MiB; copied naively, the host would hold
;; 62.5 MiB (and with a larger buffer, any amount). The agent must stop copying at the
;; call's output budget.
(module
  ;;PRELUDE
  (data (i32.const 256) "st")
  (func (export "dataweaver:transform/transformer@0.1.0#process") (param i32 i32) (result i32)
    (local $i i32)
    (local $e i32)
    ;; 5 pages: the result at 64 KiB, the events after it, the shared payload at 256 KiB.
    (if (i32.lt_u (memory.size) (i32.const 5))
      (then (drop (memory.grow (i32.sub (i32.const 5) (memory.size))))))
    (loop $each
      ;; An event (canonical ABI, 56 bytes): ts-ns u64 @0, source @8, topic @16,
      ;; key option @24 (none), headers @36 (empty), payload @44.
      (local.set $e (i32.add (i32.const 65600) (i32.mul (local.get $i) (i32.const 56))))
      (i64.store (local.get $e) (i64.const 0))
      (i32.store offset=8 (local.get $e) (i32.const 256))
      (i32.store offset=12 (local.get $e) (i32.const 1))
      (i32.store offset=16 (local.get $e) (i32.const 257))
      (i32.store offset=20 (local.get $e) (i32.const 1))
      (i32.store offset=24 (local.get $e) (i32.const 0))
      (i32.store offset=36 (local.get $e) (i32.const 0))
      (i32.store offset=40 (local.get $e) (i32.const 0))
      (i32.store offset=44 (local.get $e) (i32.const 262144))
      (i32.store offset=48 (local.get $e) (i32.const 32768))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $each (i32.lt_u (local.get $i) (i32.const 2000))))
    ;; batch-result: events (ptr, len), errors (ptr, len = 0).
    (i32.store (i32.const 65536) (i32.const 65600))
    (i32.store (i32.const 65540) (i32.const 2000))
    (i32.store (i32.const 65544) (i32.const 0))
    (i32.store (i32.const 65548) (i32.const 0))
    (i32.const 65536))
)
