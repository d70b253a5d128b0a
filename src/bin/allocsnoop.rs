fn main() {
    std::process::exit(leakd_common::main(
        allocsnoop::command(),
        std::env::args_os(),
        allocsnoop::run,
    ));
}
