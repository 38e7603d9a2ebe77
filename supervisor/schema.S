/* schema.sql, embedded as a NUL-terminated string (see store.c). */
	.section .rodata
	.global store_schema_sql
	.type store_schema_sql, @object
store_schema_sql:
	.incbin "schema.sql"
	.byte 0
	.size store_schema_sql, . - store_schema_sql
	.section .note.GNU-stack, "", @progbits
