//! The ingress and its ceilings (bare, publish, naive, node, ingress): full speed, then the
//! fixed rate, interleaved in rounds so every subject meets the same machine.

use super::*;

impl Harness {
    /// Runs the full-speed load and then the fixed-rate load against every subject,
    /// interleaved: each load is cut into rounds of a few seconds, and every round visits
    /// every subject in turn. A machine whose speed drifts during the run (shared hosts do)
    /// then skews every subject alike, so the ratios between them stay fair.
    pub(super) async fn interleave(&self, subjects: &mut [Subject]) {
        let o = &self.options;
        let (max, fixed) = (self.max_load(), self.fixed_load(0));
        self.in_rounds(subjects, max, o.max_s, rounds(o.max_s))
            .await;
        self.in_rounds(subjects, fixed, o.fixed_s, rounds_fixed(o.fixed_s))
            .await;
    }

    /// `total_s` of `load` per subject, cut into `rounds` slices that visit every subject in
    /// turn. CPU is metered at full speed only.
    pub(super) async fn in_rounds(
        &self,
        subjects: &mut [Subject],
        load: Load,
        total_s: f64,
        rounds: usize,
    ) {
        let full_speed = matches!(load.pace, Pace::Closed);
        for round in 0..rounds {
            for subject in subjects.iter_mut() {
                let slice = Load {
                    warmup: slice_warmup(self.options.warmup_s, round),
                    duration: Duration::from_secs_f64(total_s / rounds as f64),
                    first_seq: subject.next_seq,
                    ..load
                };
                let meter = CpuMeter::start(&subject.procs);
                let started = Instant::now();
                let measured = subject.driven.run(slice).await;
                if full_speed {
                    subject.add_cpu(meter.finish(), started.elapsed().as_secs_f64());
                }
                subject.absorb(full_speed, measured);
                subject.sample_memory();
            }
        }
    }

    /// Stops a subject's processes and writes its report.
    pub(super) async fn finish(&self, mut subject: Subject) -> anyhow::Result<PhaseReport> {
        let max_load = Load {
            duration: Duration::from_secs_f64(self.options.max_s),
            ..self.max_load()
        };
        let max = subject
            .max
            .take()
            .expect("every subject ran the full-speed load");
        let fixed = subject
            .fixed
            .take()
            .expect("every subject ran the fixed-rate load");
        let mut report = PhaseReport {
            max: LoadReport::new(&max_load, &max),
            fixed: LoadReport::new(&self.fixed_load(0), &fixed),
            cpu_pct: subject.cpu_pct(),
            memory: subject.server.as_ref().map(|_| subject.memory),
            accepted: None,
            stored: None,
        };
        println!("  {:<12} {}", subject.label, report.max.line());
        println!("  {:<12} {}", subject.label, report.fixed.line());
        if let Some(mut server) = subject.server.take() {
            server.proc.check_alive()?;
            server.proc.stop(Duration::from_secs(5));
        }
        if let Some(mut nats) = subject.nats.take() {
            report.accepted = Some(max.ok_total + fixed.ok_total);
            report.stored = Some(self.stored_events(&nats.base).await?);
            nats.proc.stop(Duration::from_secs(2));
        }
        Ok(report)
    }
}
