//! One agent's ledger: pure arithmetic, no actor, no disk, no clock (callers
//! pass "now").
//!
//! Two copies of the period windows are kept:
//! - `durable`: what is committed to redb. Operators see this as `spent`.
//! - `tail`: what redb will say once everything already queued for the writer
//!   has committed (`durable` + pending). Budget checks use this, and the
//!   persisted row snapshot is built from it, so the row written with the last
//!   event of any committed batch is exactly consistent with the events.
//!
//! Pending bookings are tagged with the time they were booked and the ledger's
//! generation (bumped by `reset`): when one becomes durable it is added only to
//! windows that were current when it was booked, and ignored after a reset.

use super::period;
use super::persist::{AgentRow, Fired, Override, Undo, Window};
use crate::config::{BudgetSpec, OnExhausted};
use ironcage_shared::AgentName;
use ironcage_shared::money::Micros;
use ironcage_shared::protocol::{BudgetInfo, BudgetPeriod};

/// The four period windows (day, week, month, total), indexed by [`period::index`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Windows(pub [Window; 4]);

impl Windows {
    pub fn new(now_s: u64) -> Self {
        Windows(period::ALL.map(|p| Window {
            start: period::start(p, now_s),
            spent: Micros::ZERO,
            calls: 0,
        }))
    }

    pub fn get(&self, p: BudgetPeriod) -> &Window {
        &self.0[period::index(p)]
    }

    /// Starts a fresh window for every period whose boundary `now_s` has passed.
    /// A clock that went backwards never moves a window back.
    fn roll(&mut self, now_s: u64) {
        for (w, p) in self.0.iter_mut().zip(period::ALL) {
            let start = period::start(p, now_s);
            if start > w.start {
                *w = Window {
                    start,
                    spent: Micros::ZERO,
                    calls: 0,
                };
            }
        }
    }

    /// Adds one call booked at `booked_at_s` to every window it falls in.
    fn add(&mut self, cost: Micros, booked_at_s: u64) {
        for w in &mut self.0 {
            if booked_at_s >= w.start {
                w.spent += cost;
                w.calls += 1;
            }
        }
    }

    /// Adds `earlier`'s windows that are still current here: what was
    /// taken out of a window that has not rolled since goes back in.
    fn absorb(&mut self, earlier: &Windows) {
        for (w, e) in self.0.iter_mut().zip(&earlier.0) {
            if w.start == e.start {
                w.spent += e.spent;
                w.calls += e.calls;
            }
        }
    }

    fn zero(&mut self) {
        for w in &mut self.0 {
            w.spent = Micros::ZERO;
            w.calls = 0;
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Ledger {
    /// Listed by `show`: in the current config. Unconfigured ledgers (removed
    /// agents, agents seen only in the database) keep metering quietly.
    pub configured: bool,
    pub config: Option<BudgetSpec>,
    pub override_: Option<Override>,
    pub durable: Windows,
    pub tail: Windows,
    /// Worst cases of calls in flight.
    pub reserved: Micros,
    /// Bumped by `reset`; bookings of an older generation never become spend.
    pub generation: u64,
    /// Bookings of an older generation that became durable since the last
    /// `reset`: spend again if that reset fails to commit and is undone.
    superseded: Option<Windows>,
    pub fired: Option<Fired>,
    /// (period, window start) in which a refusal was already recorded (audit
    /// entry, and the stop callback for `on_exhausted = "stop"`): once per
    /// period, however many calls are refused after it.
    pub cutoff_noted: Option<(BudgetPeriod, u64)>,
    /// Unix seconds of the next period boundary; rolling is skipped before it.
    next_boundary: u64,
}

impl Ledger {
    pub fn new(now_s: u64) -> Self {
        Ledger::from_row(
            AgentRow {
                windows: Windows::new(now_s).0,
                fired: None,
                override_: None,
            },
            now_s,
        )
    }

    /// A ledger as persisted; rolled to `now_s`.
    pub fn from_row(row: AgentRow, now_s: u64) -> Self {
        let mut l = Ledger {
            configured: false,
            config: None,
            override_: row.override_,
            durable: Windows(row.windows),
            tail: Windows(row.windows),
            reserved: Micros::ZERO,
            generation: 0,
            superseded: None,
            fired: row.fired,
            cutoff_noted: None,
            next_boundary: 0,
        };
        l.roll(now_s);
        l
    }

    /// The row to persist: the state once everything queued has committed.
    pub fn row(&self) -> AgentRow {
        AgentRow {
            windows: self.tail.0,
            fired: self.fired.clone(),
            override_: self.override_,
        }
    }

    pub fn roll(&mut self, now_s: u64) {
        if now_s < self.next_boundary {
            return;
        }
        self.durable.roll(now_s);
        self.tail.roll(now_s);
        self.next_boundary = period::next_boundary(now_s);
    }

    /// The limit in force (override first, then config); `None` = unlimited.
    pub fn limit(&self) -> Option<Micros> {
        match (&self.override_, &self.config) {
            (Some(o), _) => Some(o.limit),
            (None, Some(c)) => Some(c.limit),
            (None, None) => None,
        }
    }

    /// The period in force. Unlimited agents are shown per day.
    pub fn period(&self) -> BudgetPeriod {
        match (&self.override_, &self.config) {
            (Some(o), _) => o.period,
            (None, Some(c)) => c.period,
            (None, None) => BudgetPeriod::Day,
        }
    }

    pub fn on_exhausted(&self) -> OnExhausted {
        self.config.map_or(OnExhausted::Refuse, |c| c.on_exhausted)
    }

    /// Durable spend of the current period.
    pub fn spent(&self) -> Micros {
        self.durable.get(self.period()).spent
    }

    /// Settled but not yet durable, this period.
    pub fn pending(&self) -> Micros {
        let p = self.period();
        self.tail
            .get(p)
            .spent
            .saturating_sub(self.durable.get(p).spent)
    }

    /// What is unavailable to new calls: spent + pending + reserved.
    pub fn committed(&self) -> Micros {
        self.tail.get(self.period()).spent + self.reserved
    }

    pub fn remaining(&self) -> Option<Micros> {
        self.limit()
            .map(|l| Micros(l.saturating_sub(self.committed()).0.max(0)))
    }

    /// Holds `amount` if the budget can pay it, else says why not.
    pub fn try_reserve(
        &mut self,
        agent: &AgentName,
        amount: Micros,
    ) -> Result<(), Box<super::Exhausted>> {
        if let Some(limit) = self.limit()
            && self.committed() + amount > limit
        {
            return Err(Box::new(super::Exhausted {
                agent: agent.clone(),
                limit,
                period: self.period(),
                spent: self.spent(),
                reserved: self.pending() + self.reserved,
                requested: amount,
                on_exhausted: self.on_exhausted(),
            }));
        }
        self.reserved += amount;
        Ok(())
    }

    pub fn release(&mut self, amount: Micros) {
        self.reserved = Micros(self.reserved.saturating_sub(amount).0.max(0));
    }

    /// Books a settled cost as pending; returns the generation to tag it with.
    pub fn book(&mut self, cost: Micros, now_s: u64) -> u64 {
        self.tail.add(cost, now_s);
        self.generation
    }

    /// A booking became durable.
    pub fn on_durable(&mut self, cost: Micros, booked_at_s: u64, generation: u64) {
        if generation == self.generation {
            self.durable.add(cost, booked_at_s);
        } else if let Some(s) = &mut self.superseded {
            s.add(cost, booked_at_s);
        }
    }

    /// `budget reset`: the current period starts over from zero. Returns
    /// what [`undo_reset`](Self::undo_reset) needs should its commit fail.
    pub fn reset(&mut self, now_s: u64) -> Undo {
        let undo = Undo::Reset {
            durable: self.durable,
            tail: self.tail,
            fired: self.fired.take(),
            generation: self.generation + 1,
        };
        self.durable.zero();
        self.tail.zero();
        self.generation += 1;
        self.superseded = Some(Windows::new(now_s));
        self.cutoff_noted = None;
        undo
    }

    /// Takes back a change whose commit failed, unless a later change has
    /// replaced it (that one's own commit decides). Returns whether it did.
    ///
    /// A reset's bookings made since stay (they are real spend, in the new
    /// generation), and the spend it zeroed comes back, including what
    /// became durable after it (those bookings were of the old generation).
    pub fn undo(&mut self, undo: Undo) -> bool {
        match undo {
            Undo::Set { before, installed } => {
                if self.override_ != Some(installed) {
                    return false;
                }
                self.override_ = before;
                self.rearm();
                true
            }
            Undo::Reset {
                durable,
                tail,
                fired,
                generation,
            } => {
                if self.generation != generation {
                    return false;
                }
                self.durable.absorb(&durable);
                if let Some(s) = self.superseded.take() {
                    self.durable.absorb(&s);
                }
                self.tail.absorb(&tail);
                // Thresholds fired before the reset stay fired (in the same
                // window): they must not alert a second time.
                self.fired = match (self.fired.take(), fired) {
                    (Some(mut now), Some(old))
                        if (now.period, now.start) == (old.period, old.start) =>
                    {
                        now.thresholds.extend(old.thresholds);
                        now.thresholds.sort_unstable();
                        now.thresholds.dedup();
                        Some(now)
                    }
                    (now, old) => now.or(old),
                };
                true
            }
        }
    }

    /// Thresholds already fired in the current period.
    pub fn fired_now(&self) -> &[u32] {
        let p = self.period();
        match &self.fired {
            Some(f) if f.period == p && f.start == self.durable.get(p).start => &f.thresholds,
            _ => &[],
        }
    }

    fn crossed(&self, threshold: u32) -> bool {
        match self.limit() {
            // A zero budget has no meaningful percentage; alert once money is spent.
            Some(l) if l.0 <= 0 => self.spent().0 > 0,
            Some(l) => i128::from(self.spent().0) * 100 >= i128::from(l.0) * i128::from(threshold),
            None => false,
        }
    }

    /// Marks as fired, and returns, the thresholds durable spend has crossed
    /// that have not fired this period.
    pub fn newly_crossed(&mut self, thresholds: &[u32]) -> Vec<u32> {
        let fresh: Vec<u32> = thresholds
            .iter()
            .copied()
            .filter(|t| !self.fired_now().contains(t) && self.crossed(*t))
            .collect();
        if !fresh.is_empty() {
            let p = self.period();
            let mut all = self.fired_now().to_vec();
            all.extend(&fresh);
            all.sort_unstable();
            self.fired = Some(Fired {
                period: p,
                start: self.durable.get(p).start,
                thresholds: all,
            });
        }
        fresh
    }

    /// After a change of limit or period: thresholds no longer crossed fire
    /// again when crossed anew; those still crossed stay fired (no repeat).
    pub fn rearm(&mut self) {
        let keep: Vec<u32> = self
            .fired_now()
            .iter()
            .copied()
            .filter(|t| self.crossed(*t))
            .collect();
        let p = self.period();
        self.fired = Some(Fired {
            period: p,
            start: self.durable.get(p).start,
            thresholds: keep,
        });
    }

    /// Applies the configured budget. Returns true when an override was dropped
    /// because the configured budget changed since it was made.
    pub fn apply_spec(&mut self, spec: Option<BudgetSpec>) -> bool {
        self.config = spec;
        let base = spec.map(|s| (s.limit, s.period));
        if self.override_.is_some_and(|o| o.base != base) {
            self.override_ = None;
            return true;
        }
        false
    }

    pub fn info(&self, name: &AgentName) -> BudgetInfo {
        let p = self.period();
        let start = self.durable.get(p).start;
        BudgetInfo {
            name: name.clone(),
            limit: self.limit(),
            period: p,
            period_start: start,
            period_end: period::end(p, start),
            spent: self.spent(),
            reserved: self.pending() + self.reserved,
            remaining: self.remaining(),
            calls: self.durable.get(p).calls,
            overridden: self.override_.is_some(),
            alerts_fired: self.fired_now().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_709_164_800; // 2024-02-29T00:00:00Z, a Thursday

    fn agent() -> AgentName {
        AgentName::new("a").unwrap()
    }

    fn budgeted(limit: i64, period: BudgetPeriod) -> Ledger {
        let mut l = Ledger::new(T0);
        l.apply_spec(Some(BudgetSpec {
            limit: Micros(limit),
            period,
            on_exhausted: OnExhausted::Refuse,
            max_cost_per_call: None,
        }));
        l
    }

    #[test]
    fn reservation_arithmetic_is_exact() {
        let mut l = budgeted(1_000_000, BudgetPeriod::Day);
        l.try_reserve(&agent(), Micros(400_000)).unwrap();
        l.try_reserve(&agent(), Micros(600_000)).unwrap();
        assert_eq!(l.remaining(), Some(Micros::ZERO));
        let e = l.try_reserve(&agent(), Micros(1)).unwrap_err();
        assert_eq!(
            (e.spent, e.reserved, e.requested),
            (Micros::ZERO, Micros(1_000_000), Micros(1))
        );
        l.release(Micros(600_000));
        let generation = l.book(Micros(650_000), T0);
        l.release(Micros(400_000));
        assert_eq!(
            (l.spent(), l.pending(), l.reserved),
            (Micros::ZERO, Micros(650_000), Micros::ZERO)
        );
        assert_eq!(l.remaining(), Some(Micros(350_000)));
        l.on_durable(Micros(650_000), T0, generation);
        assert_eq!((l.spent(), l.pending()), (Micros(650_000), Micros::ZERO));
        l.try_reserve(&agent(), Micros(350_000)).unwrap();
        assert!(l.try_reserve(&agent(), Micros(1)).is_err());
    }

    #[test]
    fn windows_roll_independently_and_late_commits_stay_in_their_period() {
        let mut l = budgeted(10, BudgetPeriod::Day);
        let g = l.book(Micros(3), T0 + 10);
        l.on_durable(Micros(3), T0 + 10, g);
        let g = l.book(Micros(4), T0 + 86_399);
        // Midnight passes before the write is durable.
        l.roll(T0 + 86_400);
        assert_eq!(l.pending(), Micros::ZERO);
        l.on_durable(Micros(4), T0 + 86_399, g);
        assert_eq!(
            l.spent(),
            Micros::ZERO,
            "yesterday's call does not count today"
        );
        assert_eq!(
            l.durable.get(BudgetPeriod::Month).spent,
            Micros::ZERO,
            "March 1st starts a month too"
        );
        assert_eq!(l.durable.get(BudgetPeriod::Week).spent, Micros(7));
        assert_eq!(l.durable.get(BudgetPeriod::Total).calls, 2);
    }

    #[test]
    fn reset_discards_pending_of_the_old_generation() {
        let mut l = budgeted(10, BudgetPeriod::Week);
        let g = l.book(Micros(5), T0);
        l.reset(T0);
        l.on_durable(Micros(5), T0, g);
        assert_eq!((l.spent(), l.pending()), (Micros::ZERO, Micros::ZERO));
    }

    #[test]
    fn thresholds_fire_once_and_rearm_on_limit_change() {
        let mut l = budgeted(100, BudgetPeriod::Day);
        let th = [50, 80, 100];
        let g = l.book(Micros(85), T0);
        assert!(
            l.newly_crossed(&th).is_empty(),
            "pending spend does not alert"
        );
        l.on_durable(Micros(85), T0, g);
        assert_eq!(l.newly_crossed(&th), vec![50, 80]);
        assert!(l.newly_crossed(&th).is_empty());
        l.override_ = Some(Override {
            limit: Micros(1000),
            period: BudgetPeriod::Day,
            base: None,
            set_at_ms: 0,
        });
        l.rearm();
        assert!(l.fired_now().is_empty());
        l.override_ = Some(Override {
            limit: Micros(150),
            period: BudgetPeriod::Day,
            base: None,
            set_at_ms: 0,
        });
        l.rearm();
        assert_eq!(l.newly_crossed(&th), vec![50]);
        l.roll(T0 + 86_400);
        assert!(l.fired_now().is_empty(), "a new period re-arms everything");
    }

    #[test]
    fn override_survives_until_config_changes() {
        let mut l = budgeted(100, BudgetPeriod::Day);
        let base = l.config.map(|c| (c.limit, c.period));
        l.override_ = Some(Override {
            limit: Micros(5),
            period: BudgetPeriod::Month,
            base,
            set_at_ms: 0,
        });
        assert!(!l.apply_spec(l.config), "same config keeps the override");
        assert_eq!(
            (l.limit(), l.period()),
            (Some(Micros(5)), BudgetPeriod::Month)
        );
        let mut changed = l.config.unwrap();
        changed.limit = Micros(200);
        assert!(l.apply_spec(Some(changed)));
        assert_eq!(
            (l.limit(), l.period()),
            (Some(Micros(200)), BudgetPeriod::Day)
        );
    }

    #[test]
    fn unlimited_always_reserves_and_zero_budget_refuses() {
        let mut l = Ledger::new(T0);
        l.try_reserve(&agent(), Micros(i64::MAX)).unwrap();
        assert_eq!(l.remaining(), None);
        let mut z = budgeted(0, BudgetPeriod::Total);
        assert!(z.try_reserve(&agent(), Micros(1)).is_err());
        z.try_reserve(&agent(), Micros::ZERO).unwrap();
    }
}
