//! txpipe operator: not built yet (issue "Operator"). This binary only says so, so that nothing
//! claims the operator works before it does.

fn main() {
    eprintln!(
        "txpipe-operator is not implemented yet; see the Operator issue and docs/architecture.md"
    );
    std::process::exit(2);
}
