//! Deterministic generator of realistic, labelled card transactions.
//!
//! Modelled on the transaction simulator of the Fraud Detection Handbook (Le Borgne, Siblini,
//! Lebichot & Bontempi, "Reproducible Machine Learning for Credit Card Fraud Detection –
//! Practical Handbook", Université Libre de Bruxelles, 2022, chapter 3 "Transaction data
//! simulator") and on Sparkov's merchant categories (Brandon Harris, "Sparkov Data Generation"):
//!
//! - **Customers** have a home country, one or two cards (Luhn-valid PANs from the BIN table of
//!   [`crate::tables`], expiry 1-60 months after the start, 0.3 % already expired), a spending
//!   scale (lognormal, median 1), a transactions-per-day rate drawn uniformly on `[0.2, 4)` (the
//!   Handbook draws it on `[0, 4)`), a card-not-present share, and a set of usual merchants
//!   (the Handbook's "terminals within radius r" become 15-30 domestic shops and 4-10 web shops).
//! - **Merchants** have an MCC, a country and terminals (1-4 physical terminals, or one virtual
//!   terminal for web shops).
//! - **Each simulated day**, every customer makes Poisson(rate) transactions at local times drawn
//!   from N(12:00, 20 000 s) truncated to the day (the Handbook's time-of-day model). The amount is
//!   `median(MCC) × customer scale × lognormal(0, σ(MCC))`, in the merchant's currency. Channel and
//!   entry mode follow the channel: card present → chip / contactless / magstripe / manual,
//!   e-commerce → e-commerce entry with 3-D Secure mostly in Europe, MOTO → manual. 1.5 % of
//!   card-present purchases happen abroad.
//! - **Fraud scenarios** ([`SCENARIOS`]) are added so that the total fraud share is
//!   [`GeneratorConfig::fraud_rate`], split by [`GeneratorConfig::scenario_weights`]:
//!   - `high_amount`: a genuine purchase whose amount is replaced by one far above the customer's
//!     profile and always above 220 EUR (the Handbook's scenario 1 threshold);
//!   - `compromised_terminal`: terminals are compromised for 28 days (Handbook scenario 2); every
//!     transaction at a compromised terminal in its window is fraud. The number of compromised
//!     terminals at a time is chosen so their expected traffic share matches the weight, and the
//!     generator starts in steady state (some terminals already compromised at time 0);
//!   - `leaked_cnp`: a card's credentials leak (Handbook scenario 3, with card-not-present use);
//!     1-6 e-commerce or MOTO purchases follow within 72 hours at web shops in another country,
//!     without 3-D Secure;
//!   - `card_testing`: bursts of 5-15 tiny (0.01-2.00 EUR) e-commerce purchases at one web shop,
//!     seconds apart, each with a different stolen card;
//!   - `impossible_travel`: 2-45 minutes after a genuine card-present purchase, the same card is
//!     used card-present in another region of the world (needs per-card state to detect);
//!   - `stolen_card_night`: 1-4 card-present purchases between 00:00 and 05:00 local time at
//!     jewelry, electronics, quasi-cash or gambling merchants ([`crate::tables::RISKY_MCCS`]);
//!   - `malformed_pan`: a purchase whose PAN fails the Luhn check (one digit changed, or digits
//!     dropped or added so the length is also wrong).
//! - **Event time** starts at [`GeneratorConfig::start_time_us`] and advances day by day; records
//!   come out in event-time order. Ids are `<id_prefix>tx-<20-digit counter>`.
//!
//! The label travels only in [`Generated::label`]; the [`Transaction`] has no label field.
//! Everything is drawn from one [`Rng`] in a fixed order, so a seed always yields the same
//! records (pinned by the golden-hash test).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::Arc;

use txpipe_client::pan::PanKey;
use txpipe_client::pipeline::v1::{Channel, EntryMode, Label, Transaction};
use txpipe_client::time::civil_from_days;

use crate::rng::{Rng, WeightedIndex};
use crate::tables::{self, BINS, COUNTRIES, MCCS, RISKY_MCCS};

/// Names of the fraud scenarios, in the order of [`GeneratorConfig::scenario_weights`]; the
/// value of `Label.scenario` for fraudulent records.
pub const SCENARIOS: &[&str] = &[
    "high_amount",
    "compromised_terminal",
    "leaked_cnp",
    "card_testing",
    "impossible_travel",
    "stolen_card_night",
    "malformed_pan",
];

const HIGH_AMOUNT: usize = 0;
const COMPROMISED_TERMINAL: usize = 1;
const LEAKED_CNP: usize = 2;
const CARD_TESTING: usize = 3;
const IMPOSSIBLE_TRAVEL: usize = 4;
const STOLEN_CARD_NIGHT: usize = 5;
const MALFORMED_PAN: usize = 6;

const US_PER_S: i64 = 1_000_000;
const US_PER_DAY: i64 = 86_400 * US_PER_S;
/// Days a compromised terminal stays compromised (Handbook scenario 2).
const COMPROMISE_DAYS: i64 = 28;

/// Generator settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorConfig {
    /// PRNG seed; the same seed always yields the same records.
    pub seed: u64,
    /// Number of simulated customers (each with 1-2 cards). Default 10 000.
    pub customers: u32,
    /// Number of simulated merchants (about 2 terminals each). Default 5 000; at least 50.
    pub merchants: u32,
    /// Share of fraudulent records, 0.0-0.5. Default 0.01.
    pub fraud_rate: f64,
    /// Simulated time of the start of day 0, microseconds since the Unix epoch. Default
    /// 2025-01-01T00:00:00Z.
    pub start_time_us: i64,
    /// Prefix of transaction ids (ids are `<id_prefix>tx-<20-digit counter>`). Default empty.
    pub id_prefix: String,
    /// Counter of the first transaction id. Default 0.
    pub first_counter: u64,
    /// Relative weights of [`SCENARIOS`] in the fraud mix (same order).
    pub scenario_weights: [f64; 7],
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            customers: 10_000,
            merchants: 5_000,
            fraud_rate: 0.01,
            start_time_us: 1_735_689_600 * US_PER_S,
            id_prefix: String::new(),
            first_counter: 0,
            scenario_weights: [0.15, 0.15, 0.20, 0.15, 0.10, 0.15, 0.10],
        }
    }
}

/// Errors of [`GeneratorConfig::validate`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A field is out of its range.
    #[error("generator {field} = {value} is out of range: {expected}")]
    OutOfRange {
        /// Field name.
        field: &'static str,
        /// The value given.
        value: String,
        /// The accepted range.
        expected: &'static str,
    },
}

impl GeneratorConfig {
    /// Checks the ranges of every field. Errors: [`ConfigError::OutOfRange`] naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, value: String, expected| {
            Err(ConfigError::OutOfRange {
                field,
                value,
                expected,
            })
        };
        if self.customers == 0 {
            return bad("customers", self.customers.to_string(), ">= 1");
        }
        if self.merchants < 50 {
            return bad("merchants", self.merchants.to_string(), ">= 50");
        }
        if !(0.0..=0.5).contains(&self.fraud_rate) {
            return bad("fraud_rate", self.fraud_rate.to_string(), "0.0 to 0.5");
        }
        let w = &self.scenario_weights;
        if w.iter().any(|x| !x.is_finite() || *x < 0.0) || w.iter().sum::<f64>() <= 0.0 {
            return bad(
                "scenario_weights",
                format!("{w:?}"),
                "finite, >= 0, positive sum",
            );
        }
        Ok(())
    }
}

/// One generated record: the transaction, its ground-truth label and the clear PAN.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The transaction as the workers see it (PAN sealed, no label).
    pub tx: Transaction,
    /// Ground truth, for the `labels` stream only.
    pub label: Label,
    /// The clear PAN (for tests and file export; never sent).
    pub pan: String,
}

struct Card {
    pan: String,
    expiry_month: u32,
    expiry_year: u32,
}

struct Customer {
    id: String,
    country: usize,
    cards: Vec<Card>,
    spend_scale: f64,
    tx_per_day: f64,
    cnp_share: f64,
    usual_cp: Vec<u32>,
    usual_cnp: Vec<u32>,
}

struct Merchant {
    id: String,
    mcc: usize,
    country: usize,
    online: bool,
    /// Global terminal indexes.
    terminals: Vec<u32>,
}

/// A transaction before it gets its id, in the pending heap ordered by (time, seq).
struct Draft {
    time_us: i64,
    seq: u64,
    customer: u32,
    card: u8,
    merchant: u32,
    terminal: u32,
    channel: Channel,
    entry: EntryMode,
    three_ds: bool,
    cvv_present: bool,
    amount_minor: i64,
    /// 0 = genuine, otherwise index into SCENARIOS + 1.
    scenario: u8,
    pan_override: Option<String>,
}

impl PartialEq for Draft {
    fn eq(&self, other: &Self) -> bool {
        (self.time_us, self.seq) == (other.time_us, other.seq)
    }
}
impl Eq for Draft {}
impl PartialOrd for Draft {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Draft {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.time_us, self.seq).cmp(&(other.time_us, other.seq))
    }
}

enum KeyRef<'k> {
    Borrowed(&'k PanKey),
    Shared(Arc<PanKey>),
}

impl KeyRef<'_> {
    fn get(&self) -> &PanKey {
        match self {
            KeyRef::Borrowed(k) => k,
            KeyRef::Shared(k) => k,
        }
    }
}

/// The generator: an endless iterator of [`Generated`] records in event-time order.
///
/// Building it creates the customers and merchants (about 10 ms per 10 000 customers); each
/// record costs a few microseconds, mostly the AES-256-GCM seal of the PAN.
pub struct Generator<'k> {
    cfg: GeneratorConfig,
    key: KeyRef<'k>,
    rng: Rng,
    customers: Vec<Customer>,
    merchants: Vec<Merchant>,
    /// Merchant of each terminal, and the terminal ids.
    terminal_ids: Vec<String>,
    /// Compromise window [from, until) of each terminal, microseconds; (0, 0) if none.
    compromised: Vec<(i64, i64)>,
    cp_by_country: Vec<Vec<u32>>,
    risky_cp_by_country: Vec<Vec<u32>>,
    cp_all: Vec<u32>,
    cnp_all: Vec<u32>,
    risky_cp_all: Vec<u32>,
    country_by_merchant_weight: WeightedIndex,
    /// Expected genuine transactions per day (sum of customer rates).
    genuine_per_day: f64,
    /// Probability that a genuine purchase becomes `high_amount`.
    p_high_amount: f64,
    /// Expected number of terminals compromised at any time.
    compromised_at_once: f64,
    pending: BinaryHeap<Reverse<Draft>>,
    /// Day index generated next.
    day: i64,
    seq: u64,
    counter: u64,
}

impl std::fmt::Debug for Generator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("cfg", &self.cfg)
            .field("day", &self.day)
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

fn max_utc_offset_h() -> i64 {
    COUNTRIES
        .iter()
        .map(|c| i64::from(c.utc_offset_h))
        .max()
        .unwrap_or(0)
        .max(0)
}

impl<'k> Generator<'k> {
    /// Builds the simulated world for `cfg` and seals PANs with `key`.
    ///
    /// Panics if `cfg` fails [`GeneratorConfig::validate`] (validate first to get an error).
    pub fn new(cfg: GeneratorConfig, key: &'k PanKey) -> Self {
        Self::build(cfg, KeyRef::Borrowed(key))
    }

    /// Like [`Generator::new`] with a shared key, for generators that outlive the caller's
    /// borrow (e.g. moved into a blocking thread).
    pub fn with_shared_key(cfg: GeneratorConfig, key: Arc<PanKey>) -> Generator<'static> {
        Generator::build(cfg, KeyRef::Shared(key))
    }

    /// The configuration.
    pub fn config(&self) -> &GeneratorConfig {
        &self.cfg
    }

    fn build(cfg: GeneratorConfig, key: KeyRef<'k>) -> Generator<'k> {
        if let Err(e) = cfg.validate() {
            panic!("invalid generator config: {e}");
        }
        let mut rng = Rng::new(cfg.seed);
        let n_countries = COUNTRIES.len();
        let country_by_merchant_weight =
            WeightedIndex::new(COUNTRIES.iter().map(|c| c.merchant_weight));
        let country_by_holder_weight =
            WeightedIndex::new(COUNTRIES.iter().map(|c| c.cardholder_weight));
        let cp_mcc = WeightedIndex::new(MCCS.iter().map(|m| m.cp_weight));
        let cnp_mcc = WeightedIndex::new(MCCS.iter().map(|m| m.cnp_weight));

        // Merchants. The first RISKY_MCCS.len() are physical risky shops in the first country so
        // that `stolen_card_night` always has a target, whatever the draw.
        let mut merchants = Vec::with_capacity(cfg.merchants as usize);
        let mut terminal_ids = Vec::new();
        for i in 0..cfg.merchants {
            let (mcc, country, online) = if (i as usize) < RISKY_MCCS.len() {
                let mcc = MCCS
                    .iter()
                    .position(|m| m.code == RISKY_MCCS[i as usize])
                    .unwrap_or(0);
                (mcc, 0, false)
            } else {
                let online = rng.chance(0.3);
                let mcc = if online {
                    cnp_mcc.sample(&mut rng)
                } else {
                    cp_mcc.sample(&mut rng)
                };
                (mcc, country_by_merchant_weight.sample(&mut rng), online)
            };
            let n_term = if online { 1 } else { 1 + rng.below(4) as u32 };
            let mut terminals = Vec::with_capacity(n_term as usize);
            for _ in 0..n_term {
                let t = terminal_ids.len() as u32;
                let prefix = if online { 'V' } else { 'T' };
                terminal_ids.push(format!("{prefix}{t:08}"));
                terminals.push(t);
            }
            merchants.push(Merchant {
                id: format!("m-{i:07}"),
                mcc,
                country,
                online,
                terminals,
            });
        }
        let mut cp_by_country = vec![Vec::new(); n_countries];
        let mut cnp_by_country = vec![Vec::new(); n_countries];
        let mut risky_cp_by_country = vec![Vec::new(); n_countries];
        let (mut cp_all, mut cnp_all, mut risky_cp_all) = (Vec::new(), Vec::new(), Vec::new());
        for (i, m) in merchants.iter().enumerate() {
            let i = i as u32;
            if m.online {
                cnp_by_country[m.country].push(i);
                cnp_all.push(i);
            } else {
                cp_by_country[m.country].push(i);
                cp_all.push(i);
                if MCCS[m.mcc].risky {
                    risky_cp_by_country[m.country].push(i);
                    risky_cp_all.push(i);
                }
            }
        }
        if cnp_all.is_empty() {
            // Practically impossible with >= 50 merchants at a 30 % online share; keep the
            // generator total anyway by treating the last merchant as a web shop too.
            cnp_all.push(cfg.merchants - 1);
        }

        // Customers and cards.
        let start_year_month = year_month(cfg.start_time_us);
        let mut pans = HashSet::new();
        let mut customers = Vec::with_capacity(cfg.customers as usize);
        for i in 0..cfg.customers {
            let country = country_by_holder_weight.sample(&mut rng);
            let code = COUNTRIES[country].code;
            let bins: Vec<&tables::Bin> = BINS.iter().filter(|b| b.country == code).collect();
            let bin_pick = WeightedIndex::new(bins.iter().map(|b| b.weight));
            let n_cards = if rng.chance(0.2) { 2 } else { 1 };
            let mut cards = Vec::with_capacity(n_cards);
            for _ in 0..n_cards {
                let bin = bins[bin_pick.sample(&mut rng)];
                let pan = loop {
                    let pan = make_pan(&mut rng, bin.bin, bin.brand.pan_len());
                    if pans.insert(pan.clone()) {
                        break pan;
                    }
                };
                let months_ahead = if rng.chance(0.003) {
                    -(1 + rng.below(6) as i64)
                } else {
                    1 + rng.below(60) as i64
                };
                let (y, m) = add_months(start_year_month, months_ahead);
                cards.push(Card {
                    pan,
                    expiry_month: m,
                    expiry_year: y,
                });
            }
            let domestic_cp = if cp_by_country[country].is_empty() {
                &cp_all
            } else {
                &cp_by_country[country]
            };
            let n_cp = 15 + rng.below(16) as usize;
            let usual_cp = (0..n_cp).map(|_| *rng.pick(domestic_cp)).collect();
            let n_cnp = 4 + rng.below(7) as usize;
            let usual_cnp = (0..n_cnp)
                .map(|_| {
                    let local = &cnp_by_country[country];
                    if !local.is_empty() && rng.chance(0.7) {
                        *rng.pick(local)
                    } else {
                        *rng.pick(&cnp_all)
                    }
                })
                .collect();
            customers.push(Customer {
                id: format!("c-{i:07}"),
                country,
                cards,
                spend_scale: rng.lognormal(0.0, 0.35),
                tx_per_day: rng.uniform(0.2, 4.0),
                cnp_share: rng.uniform(0.05, 0.45),
                usual_cp,
                usual_cnp,
            });
        }
        let genuine_per_day: f64 = customers.iter().map(|c| c.tx_per_day).sum();

        // Scenario budget: injected scenarios add records; high_amount and compromised_terminal
        // relabel genuine ones. With injected share i = rate × Σw(injected), a relabelling
        // scenario needs probability rate × w / (1 - i) per genuine record.
        let w = normalized(&cfg.scenario_weights);
        let r = cfg.fraud_rate;
        let injected = r
            * (w[LEAKED_CNP]
                + w[CARD_TESTING]
                + w[IMPOSSIBLE_TRAVEL]
                + w[STOLEN_CARD_NIGHT]
                + w[MALFORMED_PAN]);
        let p_high_amount = r * w[HIGH_AMOUNT] / (1.0 - injected);
        let compromised_at_once =
            r * w[COMPROMISED_TERMINAL] / (1.0 - injected) * terminal_ids.len() as f64;

        // Steady state at time 0: terminals already compromised with random remaining windows.
        let mut compromised = vec![(0i64, 0i64); terminal_ids.len()];
        let initial = rng.poisson(compromised_at_once);
        for _ in 0..initial {
            let t = rng.index(terminal_ids.len());
            let remaining = (rng.f64() * (COMPROMISE_DAYS * US_PER_DAY) as f64) as i64;
            compromised[t] = (i64::MIN, cfg.start_time_us + US_PER_DAY + remaining);
        }

        Generator {
            day: 0,
            seq: 0,
            counter: cfg.first_counter,
            cfg,
            key,
            rng,
            customers,
            merchants,
            terminal_ids,
            compromised,
            cp_by_country,
            risky_cp_by_country,
            cp_all,
            cnp_all,
            risky_cp_all,
            country_by_merchant_weight,
            genuine_per_day,
            p_high_amount,
            compromised_at_once,
            pending: BinaryHeap::new(),
        }
    }

    /// UTC midnight that starts simulated day `day`. Day 0 is the day after `start_time_us`, so
    /// that no event (local days start up to 10 hours earlier in UTC) precedes the start.
    fn day_start(&self, day: i64) -> i64 {
        self.cfg.start_time_us + (day + 1) * US_PER_DAY
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn amount_minor(&mut self, merchant: u32, eur: f64) -> i64 {
        let fx = COUNTRIES[self.merchants[merchant as usize].country].per_eur;
        ((eur * fx * 100.0).round() as i64).max(1)
    }

    fn terminal_of(&mut self, merchant: u32) -> u32 {
        let m = &self.merchants[merchant as usize];
        m.terminals[self.rng.index(m.terminals.len())]
    }

    /// A genuine purchase by `customer` at `time_us`.
    fn genuine(&mut self, customer: u32, time_us: i64) -> Draft {
        let c = &self.customers[customer as usize];
        let card = self.rng.index(c.cards.len()) as u8;
        let home = c.country;
        let cnp = self.rng.chance(c.cnp_share);
        let (merchant, channel, entry, three_ds, cvv_present);
        if cnp {
            merchant = *self.rng.pick(&self.customers[customer as usize].usual_cnp);
            let europe = COUNTRIES[self.merchants[merchant as usize].country].region
                == tables::Region::Europe;
            if self.rng.chance(0.08) {
                channel = Channel::Moto;
                entry = EntryMode::Manual;
                three_ds = false;
                cvv_present = self.rng.chance(0.9);
            } else {
                channel = Channel::Ecommerce;
                entry = EntryMode::Ecommerce;
                three_ds = self.rng.chance(if europe { 0.85 } else { 0.4 });
                cvv_present = self.rng.chance(0.97);
            }
        } else {
            merchant = if self.rng.chance(0.015) {
                // Travelling: a shop in another country.
                let mut country = self.country_by_merchant_weight.sample(&mut self.rng);
                if country == home {
                    country = (country + 1) % COUNTRIES.len();
                }
                let list = if self.cp_by_country[country].is_empty() {
                    &self.cp_all
                } else {
                    &self.cp_by_country[country]
                };
                *self.rng.pick(list)
            } else {
                *self.rng.pick(&self.customers[customer as usize].usual_cp)
            };
            channel = Channel::CardPresent;
            let x = self.rng.f64();
            entry = if x < 0.42 {
                EntryMode::Chip
            } else if x < 0.95 {
                EntryMode::Contactless
            } else if x < 0.98 {
                EntryMode::Magstripe
            } else {
                EntryMode::Manual
            };
            three_ds = false;
            cvv_present = false;
        }
        let mcc = &MCCS[self.merchants[merchant as usize].mcc];
        let scale = self.customers[customer as usize].spend_scale;
        let eur = (mcc.median_eur * scale * self.rng.lognormal(0.0, mcc.sigma)).max(0.5);
        let amount_minor = self.amount_minor(merchant, eur);
        let terminal = self.terminal_of(merchant);
        Draft {
            time_us,
            seq: self.next_seq(),
            customer,
            card,
            merchant,
            terminal,
            channel,
            entry,
            three_ds,
            cvv_present,
            amount_minor,
            scenario: 0,
            pan_override: None,
        }
    }

    /// A time of day in `customer`'s local day `day`, Handbook model: N(12:00, 20 000 s)
    /// truncated to the day. Returns UTC microseconds.
    fn local_midday_time(&mut self, customer: u32, day: i64) -> i64 {
        let off = i64::from(COUNTRIES[self.customers[customer as usize].country].utc_offset_h);
        let secs = loop {
            let s = self.rng.normal(43_200.0, 20_000.0);
            if (0.0..86_400.0).contains(&s) {
                break s;
            }
        };
        self.day_start(day) + (secs * US_PER_S as f64) as i64 - off * 3_600 * US_PER_S
    }

    fn push(&mut self, d: Draft) {
        self.pending.push(Reverse(d));
    }

    fn scenario_weight(&self, s: usize) -> f64 {
        normalized(&self.cfg.scenario_weights)[s]
    }

    /// Expected injected records per day for scenario `s`.
    fn injected_per_day(&self, s: usize) -> f64 {
        let w = normalized(&self.cfg.scenario_weights);
        let r = self.cfg.fraud_rate;
        let injected = r
            * (w[LEAKED_CNP]
                + w[CARD_TESTING]
                + w[IMPOSSIBLE_TRAVEL]
                + w[STOLEN_CARD_NIGHT]
                + w[MALFORMED_PAN]);
        self.genuine_per_day * r * self.scenario_weight(s) / (1.0 - injected)
    }

    fn generate_day(&mut self) {
        let day = self.day;
        self.day += 1;
        let start = self.day_start(day);

        // New compromised terminals (Poisson, so that the expected number at once stays put).
        let new = self
            .rng
            .poisson(self.compromised_at_once / COMPROMISE_DAYS as f64);
        for _ in 0..new {
            let t = self.rng.index(self.terminal_ids.len());
            let from = start + (self.rng.f64() * US_PER_DAY as f64) as i64;
            self.compromised[t] = (from, from + COMPROMISE_DAYS * US_PER_DAY);
        }

        // Genuine purchases, possibly relabelled.
        let mut card_present_today: Vec<(i64, u32, u8)> = Vec::new();
        for customer in 0..self.customers.len() as u32 {
            let n = self
                .rng
                .poisson(self.customers[customer as usize].tx_per_day);
            for _ in 0..n {
                let time = self.local_midday_time(customer, day);
                let mut d = self.genuine(customer, time);
                let (from, until) = self.compromised[d.terminal as usize];
                if time >= from && time < until {
                    d.scenario = COMPROMISED_TERMINAL as u8 + 1;
                } else if self.rng.chance(self.p_high_amount) {
                    let typical = MCCS[self.merchants[d.merchant as usize].mcc].median_eur
                        * self.customers[customer as usize].spend_scale;
                    let eur = (typical * self.rng.uniform(5.0, 15.0))
                        .max(220.0 + self.rng.uniform(1.0, 400.0));
                    d.amount_minor = self.amount_minor(d.merchant, eur);
                    d.scenario = HIGH_AMOUNT as u8 + 1;
                } else if d.channel == Channel::CardPresent {
                    card_present_today.push((time, customer, d.card));
                }
                self.push(d);
            }
        }

        self.inject_leaked_cnp(start);
        self.inject_card_testing(start);
        self.inject_impossible_travel(&card_present_today);
        self.inject_stolen_card_night(day);
        self.inject_malformed_pan(start);
    }

    fn random_customer(&mut self) -> u32 {
        self.rng.below(self.customers.len() as u64) as u32
    }

    fn inject_leaked_cnp(&mut self, start: i64) {
        let cases = self.rng.poisson(self.injected_per_day(LEAKED_CNP) / 3.5);
        for _ in 0..cases {
            let customer = self.random_customer();
            let card = self
                .rng
                .index(self.customers[customer as usize].cards.len()) as u8;
            let home = self.customers[customer as usize].country;
            let leak = start + (self.rng.f64() * US_PER_DAY as f64) as i64;
            let n = 1 + self.rng.below(6);
            for _ in 0..n {
                let time = leak + (self.rng.f64() * (3 * US_PER_DAY) as f64) as i64;
                // A web shop abroad, preferably in a high-risk country.
                let merchant = loop {
                    let m = *self.rng.pick(&self.cnp_all);
                    let c = self.merchants[m as usize].country;
                    if c != home && (COUNTRIES[c].high_risk || self.rng.chance(0.5)) {
                        break m;
                    }
                };
                let moto = self.rng.chance(0.15);
                let mcc = &MCCS[self.merchants[merchant as usize].mcc];
                let eur = (mcc.median_eur * self.rng.lognormal(0.7, 0.6)).max(5.0);
                let amount_minor = self.amount_minor(merchant, eur);
                let terminal = self.terminal_of(merchant);
                let d = Draft {
                    time_us: time,
                    seq: self.next_seq(),
                    customer,
                    card,
                    merchant,
                    terminal,
                    channel: if moto {
                        Channel::Moto
                    } else {
                        Channel::Ecommerce
                    },
                    entry: if moto {
                        EntryMode::Manual
                    } else {
                        EntryMode::Ecommerce
                    },
                    three_ds: false,
                    cvv_present: self.rng.chance(0.9),
                    amount_minor,
                    scenario: LEAKED_CNP as u8 + 1,
                    pan_override: None,
                };
                self.push(d);
            }
        }
    }

    fn inject_card_testing(&mut self, start: i64) {
        let cases = self.rng.poisson(self.injected_per_day(CARD_TESTING) / 10.0);
        for _ in 0..cases {
            let merchant = *self.rng.pick(&self.cnp_all);
            let terminal = self.terminal_of(merchant);
            let mut time = start + (self.rng.f64() * US_PER_DAY as f64) as i64;
            let n = 5 + self.rng.below(11);
            for _ in 0..n {
                time += (self.rng.exponential(20.0) * US_PER_S as f64) as i64 + 1;
                let customer = self.random_customer();
                let card = self
                    .rng
                    .index(self.customers[customer as usize].cards.len())
                    as u8;
                let eur = self.rng.range_i64(1, 200) as f64 / 100.0;
                let amount_minor = self.amount_minor(merchant, eur);
                let d = Draft {
                    time_us: time,
                    seq: self.next_seq(),
                    customer,
                    card,
                    merchant,
                    terminal,
                    channel: Channel::Ecommerce,
                    entry: EntryMode::Ecommerce,
                    three_ds: false,
                    cvv_present: self.rng.chance(0.5),
                    amount_minor,
                    scenario: CARD_TESTING as u8 + 1,
                    pan_override: None,
                };
                self.push(d);
            }
        }
    }

    fn inject_impossible_travel(&mut self, card_present_today: &[(i64, u32, u8)]) {
        if card_present_today.is_empty() {
            return;
        }
        let cases = self.rng.poisson(self.injected_per_day(IMPOSSIBLE_TRAVEL));
        for _ in 0..cases {
            let (t0, customer, card) = *self.rng.pick(card_present_today);
            let home_region = COUNTRIES[self.customers[customer as usize].country].region;
            let merchant = loop {
                let m = *self.rng.pick(&self.cp_all);
                if COUNTRIES[self.merchants[m as usize].country].region != home_region {
                    break m;
                }
                if self.rng.chance(0.02) {
                    // Few or no shops outside the home region: any foreign shop will do.
                    let c = self.merchants[m as usize].country;
                    if c != self.customers[customer as usize].country {
                        break m;
                    }
                }
            };
            let time = t0 + ((self.rng.uniform(2.0, 45.0)) * 60.0 * US_PER_S as f64) as i64;
            let x = self.rng.f64();
            let entry = if x < 0.5 {
                EntryMode::Magstripe
            } else if x < 0.8 {
                EntryMode::Chip
            } else {
                EntryMode::Contactless
            };
            let mcc = &MCCS[self.merchants[merchant as usize].mcc];
            let eur = (mcc.median_eur * self.rng.lognormal(0.7, 0.5)).max(5.0);
            let amount_minor = self.amount_minor(merchant, eur);
            let terminal = self.terminal_of(merchant);
            let d = Draft {
                time_us: time,
                seq: self.next_seq(),
                customer,
                card,
                merchant,
                terminal,
                channel: Channel::CardPresent,
                entry,
                three_ds: false,
                cvv_present: false,
                amount_minor,
                scenario: IMPOSSIBLE_TRAVEL as u8 + 1,
                pan_override: None,
            };
            self.push(d);
        }
    }

    fn inject_stolen_card_night(&mut self, day: i64) {
        let cases = self
            .rng
            .poisson(self.injected_per_day(STOLEN_CARD_NIGHT) / 2.5);
        for _ in 0..cases {
            let customer = self.random_customer();
            let card = self
                .rng
                .index(self.customers[customer as usize].cards.len()) as u8;
            // The cardholder's country, or if it has no risky shop, the country of one that has.
            let home = self.customers[customer as usize].country;
            let country = if self.risky_cp_by_country[home].is_empty() {
                let m = *self.rng.pick(&self.risky_cp_all);
                self.merchants[m as usize].country
            } else {
                home
            };
            let off = i64::from(COUNTRIES[country].utc_offset_h);
            let local = (self.rng.f64() * 4.0 * 3_600.0 * US_PER_S as f64) as i64;
            let mut time = self.day_start(day) + local - off * 3_600 * US_PER_S;
            let n = 1 + self.rng.below(4);
            for _ in 0..n {
                let merchant = *self.rng.pick(&self.risky_cp_by_country[country]);
                let x = self.rng.f64();
                let entry = if x < 0.6 {
                    EntryMode::Contactless
                } else if x < 0.8 {
                    EntryMode::Chip
                } else {
                    EntryMode::Magstripe
                };
                let mcc = &MCCS[self.merchants[merchant as usize].mcc];
                let eur = mcc.median_eur * self.rng.uniform(1.5, 4.0);
                let amount_minor = self.amount_minor(merchant, eur);
                let terminal = self.terminal_of(merchant);
                let d = Draft {
                    time_us: time,
                    seq: self.next_seq(),
                    customer,
                    card,
                    merchant,
                    terminal,
                    channel: Channel::CardPresent,
                    entry,
                    three_ds: false,
                    cvv_present: false,
                    amount_minor,
                    scenario: STOLEN_CARD_NIGHT as u8 + 1,
                    pan_override: None,
                };
                self.push(d);
                time += (self.rng.uniform(5.0, 40.0) * 60.0 * US_PER_S as f64) as i64;
            }
        }
    }

    fn inject_malformed_pan(&mut self, start: i64) {
        let cases = self.rng.poisson(self.injected_per_day(MALFORMED_PAN));
        for _ in 0..cases {
            let customer = self.random_customer();
            let time = start + (self.rng.f64() * US_PER_DAY as f64) as i64;
            let mut d = self.genuine(customer, time);
            let pan = &self.customers[customer as usize].cards[d.card as usize].pan;
            d.pan_override = Some(malform(&mut self.rng, pan));
            d.scenario = MALFORMED_PAN as u8 + 1;
            self.push(d);
        }
    }

    fn finish(&mut self, d: Draft) -> Generated {
        let id = format!("{}tx-{:020}", self.cfg.id_prefix, self.counter);
        self.counter += 1;
        let c = &self.customers[d.customer as usize];
        let card = &c.cards[d.card as usize];
        let pan = d.pan_override.unwrap_or_else(|| card.pan.clone());
        let m = &self.merchants[d.merchant as usize];
        let country = &COUNTRIES[m.country];
        let key = self.key.get();
        let local_secs =
            (d.time_us / US_PER_S + i64::from(country.utc_offset_h) * 3_600).rem_euclid(86_400);
        let tx = Transaction {
            pan_encrypted: key.seal(&id, pan.as_bytes()),
            key_id: key.id().to_string(),
            event_time_us: d.time_us,
            customer_id: c.id.clone(),
            expiry_month: card.expiry_month,
            expiry_year: card.expiry_year,
            amount_minor: d.amount_minor,
            currency: country.currency.to_string(),
            merchant_id: m.id.clone(),
            mcc: MCCS[m.mcc].code,
            terminal_id: self.terminal_ids[d.terminal as usize].clone(),
            merchant_country: country.code.to_string(),
            channel: d.channel as i32,
            entry_mode: d.entry as i32,
            three_ds: d.three_ds,
            cvv_present: d.cvv_present,
            local_hour: (local_secs / 3_600) as u32,
            features: Vec::new(),
            feature_set: String::new(),
            id: id.clone(),
        };
        let label = Label {
            transaction_id: id,
            is_fraud: d.scenario != 0,
            scenario: if d.scenario == 0 {
                String::new()
            } else {
                SCENARIOS[d.scenario as usize - 1].to_string()
            },
        };
        Generated { tx, label, pan }
    }
}

impl Iterator for Generator<'_> {
    type Item = Generated;

    fn next(&mut self) -> Option<Generated> {
        loop {
            // Drafts earlier than the watermark are final: no later day can produce earlier
            // events (the earliest local midnight of day d+1 is max-offset hours before its UTC
            // start, and injected events never precede their day's UTC start).
            let watermark = self.day_start(self.day) - max_utc_offset_h() * 3_600 * US_PER_S;
            if self.day > 0
                && let Some(Reverse(top)) = self.pending.peek()
                && top.time_us < watermark
            {
                let Reverse(d) = self.pending.pop().expect("peeked");
                return Some(self.finish(d));
            }
            self.generate_day();
        }
    }
}

fn normalized(w: &[f64; 7]) -> [f64; 7] {
    let sum: f64 = w.iter().sum();
    w.map(|x| x / sum)
}

/// A PAN of `len` digits starting with `bin`, random middle digits, Luhn check digit last.
fn make_pan(rng: &mut Rng, bin: &str, len: usize) -> String {
    let mut s = String::with_capacity(len);
    s.push_str(bin);
    while s.len() < len - 1 {
        s.push((b'0' + rng.below(10) as u8) as char);
    }
    let check = tables::luhn_check_digit(&s);
    s.push((b'0' + check) as char);
    s
}

/// A corrupted copy of `pan` that always fails the Luhn check: 60 % one digit changed (the
/// Luhn check catches every single-digit error), 20 % 1-3 digits dropped, 20 % 1-2 added.
fn malform(rng: &mut Rng, pan: &str) -> String {
    let mut digits: Vec<u8> = pan.bytes().collect();
    let x = rng.f64();
    if x < 0.6 {
        let i = 6 + rng.index(digits.len() - 6);
        let old = digits[i] - b'0';
        let new = (old + 1 + rng.below(9) as u8) % 10;
        digits[i] = b'0' + new;
    } else if x < 0.8 {
        let drop = 1 + rng.index(3);
        digits.truncate(digits.len() - drop);
    } else {
        for _ in 0..1 + rng.index(2) {
            digits.push(b'0' + rng.below(10) as u8);
        }
    }
    let mut s = String::from_utf8(digits).expect("ASCII digits");
    if tables::luhn_valid(&s) {
        // A length change can keep the sum a multiple of 10: bump the last digit.
        let last = s.pop().expect("non-empty") as u8 - b'0';
        s.push((b'0' + (last + 1) % 10) as char);
    }
    s
}

/// Year and month (1-12) of a UTC time in microseconds.
fn year_month(time_us: i64) -> (i64, u32) {
    let (y, m, _) = civil_from_days(time_us.div_euclid(US_PER_DAY));
    (y, m)
}

/// (year, month 1-12) plus `months` (may be negative) → (four-digit year, month).
fn add_months((y, m): (i64, u32), months: i64) -> (u32, u32) {
    let total = y * 12 + i64::from(m) - 1 + months;
    (
        total.div_euclid(12) as u32,
        (total.rem_euclid(12) + 1) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use txpipe_client::time::days_from_civil;

    #[test]
    fn civil_date_conversions_round_trip() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_089), (2025, 1, 1));
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        for z in [-1_000_000, -1, 0, 59, 10_957, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(add_months((2025, 1), -1), (2024, 12));
        assert_eq!(add_months((2025, 11), 3), (2026, 2));
    }

    #[test]
    fn malformed_pans_always_fail_luhn() {
        let mut rng = Rng::new(3);
        for _ in 0..10_000 {
            let pan = make_pan(&mut rng, "497010", 16);
            assert!(tables::luhn_valid(&pan));
            assert!(!tables::luhn_valid(&malform(&mut rng, &pan)));
        }
    }
}
