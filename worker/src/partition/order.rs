//! Deliveries lost in transit. JetStream numbers each consumer's deliveries (the consumer
//! sequence, redeliveries included); a delivery that never reached us (a pull broken by a
//! leader change, a reconnect) counts as delivered and comes again only after the ack wait,
//! while later events keep coming at once and would overtake it in their conversation. A
//! jump in the numbering shows it. Every consumer a runner pulls is freshly created, so its
//! first delivery is 1: a first delivery lost in transit is caught too.

/// The consumer sequences seen on one fresh consumer.
#[derive(Debug)]
pub struct DeliveryOrder {
    last: u64,
}

/// A delivery that does not follow the last one.
#[derive(Debug, PartialEq, Eq)]
pub struct Gap {
    pub expected: u64,
    pub got: u64,
}

impl DeliveryOrder {
    /// For a consumer just created: nothing delivered yet.
    pub fn fresh() -> Self {
        Self { last: 0 }
    }

    /// Records the delivery numbered `sequence` (`None`: not a JetStream delivery, nothing to
    /// check); a [`Gap`] when deliveries before it were lost.
    pub fn next(&mut self, sequence: Option<u64>) -> Result<(), Gap> {
        let Some(got) = sequence else { return Ok(()) };
        let expected = self.last + 1;
        if got != expected {
            return Err(Gap { expected, got });
        }
        self.last = got;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_deliveries_pass() {
        let mut order = DeliveryOrder::fresh();
        for n in 1..=5 {
            assert_eq!(order.next(Some(n)), Ok(()));
        }
    }

    #[test]
    fn a_lost_first_delivery_is_a_gap() {
        let mut order = DeliveryOrder::fresh();
        assert_eq!(
            order.next(Some(2)),
            Err(Gap {
                expected: 1,
                got: 2
            })
        );
    }

    #[test]
    fn a_jump_or_a_step_back_is_a_gap() {
        let mut order = DeliveryOrder::fresh();
        order.next(Some(1)).unwrap();
        order.next(Some(2)).unwrap();
        assert_eq!(
            order.next(Some(4)),
            Err(Gap {
                expected: 3,
                got: 4
            })
        );
        // A new consumer leader that had not seen the last deliveries numbers them again.
        assert_eq!(
            order.next(Some(2)),
            Err(Gap {
                expected: 3,
                got: 2
            })
        );
    }
}
