"""Training: the run (`run`), what a strategy gets and returns (`context`), the strategies
(`strategies/`, one module each), the loop (`loop`, its `subscribers`, `checkpoint`), heads on cached features
(`heads/`), training on images (`network`), distillation's teacher (`teacher`), losses and the LR
range test (`lrfind`)."""
