leakd_common::tool_main!(allocsnoop);
