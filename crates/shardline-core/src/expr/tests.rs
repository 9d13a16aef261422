use super::*;

const VARS: &[VarDef] = &[
    VarDef::number("amount", "amount"),
    VarDef::number("count", "count"),
    VarDef::boolean("new_country", "new country"),
    VarDef::text("country", "country"),
    VarDef::one_of("channel", "channel", &["pos", "ecom", "atm", "moto"]),
    VarDef::number("mcc", "mcc"),
    VarDef::text("bin", "bin"),
];

struct Env {
    amount: f64,
    count: f64,
    new_country: bool,
    country: &'static str,
    channel: &'static str,
    mcc: f64,
    bin: &'static str,
    lists: Vec<ListValues>,
}

impl Default for Env {
    fn default() -> Self {
        Self {
            amount: 1000.0,
            count: 3.0,
            new_country: false,
            country: "GB",
            channel: "pos",
            mcc: 5411.0,
            bin: "41111111",
            lists: vec![
                ListValues::new(["GB", "IE"]),
                ListValues::new(["7995", "4829"]),
                ListValues::new(["4111"]),
            ],
        }
    }
}

impl Vars for Env {
    fn number(&self, slot: u16) -> f64 {
        match slot {
            0 => self.amount,
            1 => self.count,
            _ => self.mcc,
        }
    }
    fn boolean(&self, _slot: u16) -> bool {
        self.new_country
    }
    fn text(&self, slot: u16) -> &str {
        match slot {
            3 => self.country,
            4 => self.channel,
            _ => self.bin,
        }
    }
    fn list(&self, slot: u16) -> Option<&ListValues> {
        self.lists.get(usize::from(slot))
    }
}

fn lists() -> Vec<(String, ListKind)> {
    vec![
        ("home".into(), ListKind::Country),
        ("risky_mcc".into(), ListKind::Mcc),
        ("bins".into(), ListKind::Bin),
    ]
}

fn compile(src: &str) -> Result<Condition, ExprError> {
    Condition::compile(src, VARS, &lists())
}

fn eval(src: &str, env: &Env) -> bool {
    compile(src)
        .unwrap_or_else(|e| panic!("{src}: {e}"))
        .eval(env)
}

fn err(src: &str) -> ExprError {
    match compile(src) {
        Ok(_) => panic!("{src} compiled"),
        Err(e) => e,
    }
}

#[test]
fn comparisons() {
    let e = Env::default();
    for (src, want) in [
        ("amount > 999", true),
        ("amount > 1000", false),
        ("amount >= 1000", true),
        ("amount < 1000", false),
        ("amount <= 1000", true),
        ("amount == 1000", true),
        ("amount != 1000", false),
        ("1000 == amount", true),
        ("country == \"GB\"", true),
        ("country != 'GB'", true == false),
        ("new_country == false", true),
        ("new_country != true", true),
        ("channel == \"pos\"", true),
    ] {
        assert_eq!(eval(src, &e), want, "{src}");
    }
}

#[test]
fn logic_and_precedence() {
    let e = Env::default();
    for (src, want) in [
        ("true and false", false),
        ("true or false", true),
        ("not false", true),
        ("not new_country", true),
        ("not amount > 5000", true),
        ("true or false and false", true),
        ("(true or false) and false", false),
        ("not true or true", true),
        ("not (true or true)", false),
        ("count >= 3 and (new_country or country == 'GB')", true),
    ] {
        assert_eq!(eval(src, &e), want, "{src}");
    }
}

#[test]
fn arithmetic() {
    let e = Env::default();
    for (src, want) in [
        ("amount / count > 333.3", true),
        ("amount / count < 333.4", true),
        ("amount - 1 * 2 == 998", true),
        ("(amount - 1) * 2 == 1998", true),
        ("amount % 7 == 6", true),
        ("-amount < 0", true),
        ("- - amount == 1000", true),
        ("amount / 0 == 0", true),
        ("amount % 0 == 0", true),
        ("abs(0 - amount) == 1000", true),
        ("min(amount, count) == 3", true),
        ("max(amount, count) == 1000", true),
        ("num(new_country) + num(true) == 1", true),
        ("1e3 == amount", true),
        ("50_000 > amount", true),
        ("2.5e-1 * 4 == 1", true),
    ] {
        assert_eq!(eval(src, &e), want, "{src}");
    }
}

#[test]
fn sets_and_lists() {
    let e = Env::default();
    for (src, want) in [
        ("country in ['GB', 'FR']", true),
        ("country not in ['GB', 'FR']", false),
        ("country in []", false),
        ("mcc in [5411, 7995,]", true),
        ("mcc not in [5411]", false),
        ("amount in [-1, 1000]", true),
        ("country in @home", true),
        ("country not in @home", false),
        ("mcc in @risky_mcc", false),
        ("mcc not in @risky_mcc", true),
        ("bin in @bins", true),
        ("channel in ['pos', 'atm']", true),
        ("regex_match(country, '^G')", true),
        ("regex_match(country, '^F')", false),
        ("starts_with(bin, '4111')", true),
    ] {
        assert_eq!(eval(src, &e), want, "{src}");
    }
    let far = Env {
        country: "US",
        mcc: 7995.0,
        bin: "52000000",
        ..Env::default()
    };
    assert!(eval("country not in @home", &far));
    assert!(eval("mcc in @risky_mcc", &far));
    assert!(!eval("bin in @bins", &far));
    // A declared list the store does not hold is empty.
    let none = Env {
        lists: Vec::new(),
        ..Env::default()
    };
    assert!(!eval("country in @home", &none));
    assert!(eval("country not in @home", &none));
}

#[test]
fn escapes_and_regexes() {
    let e = Env {
        country: "a.b\\c'd\"",
        ..Env::default()
    };
    assert!(eval(r#"country == 'a.b\\c\'d"'"#, &e));
    assert!(eval(r#"country == "a.b\\c'd\"""#, &e));
    assert!(eval(r"regex_match(country, '^a\.b')", &e));
    assert!(!eval(r"regex_match(country, '^a\.c')", &e));
    let m = Env {
        country: "m12",
        ..Env::default()
    };
    assert!(eval(r"regex_match(country, '^m\d+$')", &m));
    assert!(!eval(r"regex_match(country, '^m\d+$')", &Env::default()));
    let huge = format!("regex_match(country, '(?:a?){{{}}}')", 5_000);
    assert!(err(&huge).message.contains("bad regular expression"));
    assert_eq!(
        compile("regex_match(country, 'x') or regex_match(country, 'y')")
            .unwrap()
            .regexes(),
        2
    );
}

#[test]
fn zero_and_minus_zero_are_one_number_in_sets() {
    let z = Env {
        amount: 0.0,
        ..Env::default()
    };
    assert!(eval("amount in [-0]", &z));
    assert!(eval("amount in [0, -0]", &z));
    assert!(eval("-amount in [0]", &z));
    assert!(eval("amount == -0", &z));
}

#[test]
fn reads_name_each_variable_once_in_order() {
    let c = compile("amount > 1 and count > amount and country in @home").unwrap();
    assert_eq!(c.reads(), &[0, 1, 3]);
    assert_eq!(c.lists(), &[0]);
}

#[test]
fn errors_name_the_position() {
    let cases: &[(&str, (usize, usize), &str)] = &[
        ("amont > 5", (1, 1), "unknown name \"amont\""),
        ("amount > 'x'", (1, 8), "compares numbers"),
        (
            "amount == 'x'",
            (1, 8),
            "cannot compare a number with a string",
        ),
        ("country in @nope", (1, 12), "unknown list @nope"),
        ("amount in @home", (1, 11), "cannot hold a number"),
        ("country in @risky_mcc", (1, 12), "cannot hold a string"),
        ("amount and true", (1, 1), "and needs a boolean"),
        ("country + 1 > 0", (1, 1), "+ needs a number"),
        ("amount + 1", (1, 8), "must be true or false"),
        ("amount >", (1, 9), "expected"),
        ("amount > 5 5", (1, 12), "expected"),
        ("\n  (amount > 5", (2, 14), "expected"),
        ("channel == 'poss'", (1, 12), "one of pos, ecom"),
        ("channel in ['pos', 'web']", (1, 20), "never \"web\""),
        ("country in ['GB', 1]", (1, 19), "string literals only"),
        ("amount in [1, count]", (1, 15), "number literals only"),
        ("new_country in [true]", (1, 1), "not a boolean"),
        ("country in country", (1, 12), "take a set"),
        ("@home", (1, 1), "can only follow in"),
        ("nope(1)", (1, 1), "unknown function nope()"),
        ("abs(1, 2) > 0", (1, 1), "takes 1 argument"),
        ("regex_match(country, country)", (1, 22), "string literal"),
        (
            "regex_match(country, '(')",
            (1, 22),
            "bad regular expression",
        ),
        ("not amount", (1, 5), "not needs a boolean"),
        ("and", (1, 1), "expected"),
        ("", (1, 1), "expected"),
    ];
    for (src, (line, col), msg) in cases {
        let e = err(src);
        assert_eq!((e.line, e.col), (*line, *col), "{src}: {e}");
        assert!(e.message.contains(msg), "{src}: {e}");
    }
}

#[test]
fn hostile_conditions_are_refused_not_crashed_on() {
    let deep = format!("{}true{}", "(".repeat(1_000), ")".repeat(1_000));
    assert!(err(&deep).message.contains("nested more than"));
    let nots = format!("{}true", "not ".repeat(1_000));
    assert!(err(&nots).message.contains("not / - operators"));
    let negs = format!("{}1 > 0", "-".repeat(4_000));
    assert!(err(&negs).message.contains("not / - operators"));
    // A run of 100 (under the total) is still deeper than a run may be.
    let run = format!("{}true", "not ".repeat(100));
    assert!(err(&run).message.contains("operators deep"));
    // A prefix operator before looser operators nests the parser once each.
    let mixed = format!("1 {} > 0", "+ not 1 ".repeat(500));
    assert!(
        err(&mixed).message.contains("not / - operators"),
        "{}",
        err(&mixed)
    );
    let mixed = format!("count {} > 0", "== not true ".repeat(300));
    assert!(err(&mixed).message.contains("not / - operators"));
    let ors = vec!["true"; 500].join(" or ");
    assert!(err(&ors).message.contains("operators deep"));
    let long = format!("amount > {}", "1".repeat(MAX_CONDITION_LEN));
    assert!(err(&long).message.contains("longer than"));
    assert!(err("amount > 1e999").message.contains("out of range"));
    // Long but within bounds: a chain of 500 ors compiles and evaluates.
    let chain = vec!["amount > 5000"; 200].join(" or ");
    assert!(!eval(&chain, &Env::default()));
    let s = "\"a\\\"(((((\"";
    assert!(!eval(&format!("country == {s}"), &Env::default()));
}

proptest::proptest! {
    #[test]
    fn arithmetic_agrees_with_rust(a in -1e6f64..1e6, b in -1e6f64..1e6, c in -1e6f64..1e6) {
        let env = Env { amount: a, count: b, mcc: c, ..Env::default() };
        let want = a + b * c - a / if b == 0.0 { 1.0 } else { b };
        let fmt = |x: f64| format!("{x:?}");
        let src = format!(
            "amount + count * mcc - (if_zero) == {}", fmt(want)
        ).replace("(if_zero)", if b == 0.0 { "amount" } else { "amount / count" });
        let c = Condition::compile(&src, VARS, &lists()).unwrap();
        // Same operations in the same order: bit-for-bit equal.
        proptest::prop_assert!(c.eval(&env), "{}", src);
    }

    #[test]
    fn any_text_is_refused_or_compiled_never_a_panic(s in "\\PC{0,80}") {
        let _ = Condition::compile(&s, VARS, &lists());
    }
}
