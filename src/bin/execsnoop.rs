leakd_common::tool_main!(execsnoop);
