/*
 * test_jinja.c: the Jinja interpreter, feature by feature, with the exact text jinja2 3.1 renders in
 * transformers' environment (trim_blocks, lstrip_blocks, the sandbox, transformers' tojson); then errors
 * and limits: syntax errors name the line, raise_exception's message comes through, deep nesting,
 * megabyte strings, runaway loops, output and memory blow-ups and invalid UTF-8 end in an error or a
 * defined result, never a crash.
 */
#include "core/error.h"
#include "tokenizer/jinja.h"
#include "test.h"

#include <time.h>

#define NOW 1795608000LL /* 2026-11-25 12:00:00 UTC */

static const char *base_ctx = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Hi <b>\"}, {\"role\": \"assistant\", \"content\": \"Hello\", \"tool_calls\": [{\"function\": {\"name\": \"f\", \"arguments\": {\"a\": 1, \"b\": [1.5, null, true]}}}]}], \"d\": {\"b\": 2, \"a\": 1}, \"l\": [3, 1, 2], \"s\": \"Hello, World\", \"n\": 3, \"f\": 2.5, \"no\": null, \"t\": true}";

static const struct {
    const char *group, *src, *ctx, *want;
} cases[] = {
    {"output",
     "{{ 'a' }}{{ \"b\" }}{{ 1 }}{{ 1.5 }}{{ none }}{{ None }}{{ true }}{{ False }}{{ undefined_name }}|",
     NULL,
     "ab11.5NoneNoneTrueFalse|"},
    {"output",
     "{{ [1, 'a', none, true, 1.5, (1,), (1, 2), {'k': 'v'}, []] }}",
     NULL,
     "[1, 'a', None, True, 1.5, (1,), (1, 2), {'k': 'v'}, []]"},
    {"output",
     "{{ 'it\\'s' }}{{ [\"it's\", 'say \"x\"', 'a\\nb', 'tab\\t', '\xc3\xa9', '\\x01'] }}",
     NULL,
     "it's[\"it's\", 'say \"x\"', 'a\\nb', 'tab\\t', '\xc3\xa9', '\\x01']"},
    {"output",
     "{{ 'a' 'b' }}{{ '\\u00e9\\x41\\101\\\\' }}{{ 1_000 }} {{ 0x1f }} {{ 0o17 }} {{ 0b101 }} {{ 2.5e3 }}",
     NULL,
     "ab\xc3\xa9""AA\\1000 31 15 5 2500.0"},
    {"output",
     "{{ 3.0 }} {{ 1e16 }} {{ 1e15 }} {{ 1e-4 }} {{ 1e-5 }} {{ 0.1 + 0.2 }} {{ 1/3 }} {{ -0.0 }} {{ 123456789.125 }} {{ 1.5e300 * 1e10 }}",
     NULL,
     "3.0 1e+16 1000000000000000.0 0.0001 1e-05 0.30000000000000004 0.3333333333333333 -0.0 123456789.125 inf"},
    {"output",
     "{% print 'x', 1 %}|{{ 1, 2 }}",
     NULL,
     "x1|(1, 2)"},
    {"math",
     "{{ 7 + 2 }} {{ 7 - 2 }} {{ 7 * 2 }} {{ 7 / 2 }} {{ 8 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 2 ** 3 ** 2 }}",
     NULL,
     "9 5 14 3.5 4.0 3 -4 1 2 -2 1024 0.5 64"},
    {"math",
     "{{ 7.5 // 2 }} {{ -7.5 % 2 }} {{ 1 + 2 * 3 - 4 / 2 }} {{ (1 + 2) * 3 }} {{ -2 ** 2 }} {{ (-2) ** 2 }} {{ true + 1 }} {{ 1 == 1.0 }}",
     NULL,
     "3.0 0.5 5.0 9 4 4 2 True"},
    {"math",
     "{{ 'ab' * 3 }}{{ 2 * 'x' }}{{ [1] * 2 }}{{ 'a' + 'b' }}{{ [1] + [2] }}{{ (1,) + (2,) }}{{ 'a' ~ 1 ~ none ~ 2.0 ~ [1] }}",
     NULL,
     "abababxx[1, 1]ab[1, 2](1, 2)a1None2.0[1]"},
    {"math",
     "{{ '%s=%d %05.1f %-3s| %x %r' % ('k', 42, 3.14159, 'ab', 255, 'q') }}{{ '%(a)s' % {'a': 1} }}",
     NULL,
     "k=42 003.1 ab | ff 'q'1"},
    {"logic",
     "{{ 1 < 2 }}{{ 1 < 2 < 3 }}{{ 3 > 2 > 2 }}{{ 'a' < 'b' }}{{ [1, 2] < [1, 3] }}{{ 1 != 1.0 }}{{ none == none }}{{ x == y }}",
     NULL,
     "TrueTrueFalseTrueTrueFalseTrueTrue"},
    {"logic",
     "{{ 0 and 1 }}|{{ 1 and 'y' }}|{{ '' or 'x' }}|{{ none or 0 }}|{{ not 0 }}|{{ not 1 == 2 }}",
     NULL,
     "0|y|x|0|True|True"},
    {"logic",
     "{{ 'a' in 'cat' }}{{ 1 in [1, 2] }}{{ 'k' in {'k': 1} }}{{ 3 not in [1] }}{{ 'x' in undefined_name }}",
     NULL,
     "TrueTrueTrueTrueFalse"},
    {"logic",
     "{{ 'y' if n > 2 else 'n' }}|{{ 'y' if n > 5 }}|{{ 'a' if 0 else 'b' if 0 else 'c' }}",
     NULL,
     "y||c"},
    {"access",
     "{{ d.a }}{{ d['b'] }}{{ l[0] }}{{ l[-1] }}{{ l.1 }}{{ s[0] }}{{ s[-1] }}{{ d.missing }}|{{ l[10] }}|{{ no.x }}|",
     NULL,
     "12321Hd|||"},
    {"access",
     "{{ messages[0].content }}{{ messages[1]['role'] }}{{ messages[2].tool_calls[0].function.name }}{{ messages|length }}",
     NULL,
     "Be brief.userf3"},
    {"access",
     "{{ s[1:4] }}|{{ s[::-1] }}|{{ s[-5:] }}|{{ l[::2] }}|{{ l[1:] }}|{{ l[:-1] }}|{{ (1, 2, 3)[1:] }}|{{ 'h\xc3\xa9llo'[1:3] }}|{{ '\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e'[-1] }}|{{ 'abcdef'[1:5:2] }}",
     NULL,
     "ell|dlroW ,olleH|World|[3, 2]|[1, 2]|[3, 1]|(2, 3)|\xc3\xa9l|\xe8\xaa\x9e|bd"},
    {"access",
     "{{ d.items() }}|{{ d.keys()|list }}|{{ d.values()|list }}|{{ d.get('a') }}|{{ d.get('z', 9) }}|{{ d.get('z') }}",
     NULL,
     "dict_items([('b', 2), ('a', 1)])|['b', 'a']|[2, 1]|1|9|None"},
    {"ws",
     "a\n  {% if true %}\n  b\n  {% endif %}\nc",
     NULL,
     "a\n  b\nc"},
    {"ws",
     "a  {% if true %}b{% endif %}  c",
     NULL,
     "a  b  c"},
    {"ws",
     "  {{ 1 }}\n  {% if true %}x{% endif %}",
     NULL,
     "  1\nx"},
    {"ws",
     "{%- if true -%}\n  a  \n{%- endif -%}\n b ",
     NULL,
     "ab "},
    {"ws",
     "line\n    {%+ if true %}x{% endif %}\n",
     NULL,
     "line\n    x"},
    {"ws",
     "{% if true +%}\nx{% endif %}",
     NULL,
     "\nx"},
    {"ws",
     "{{- '  a  ' -}}\n\n  {{ 'b' }}  \n",
     NULL,
     "  a  b  "},
    {"ws",
     "  {#- c #}\n  x\n  {# c2 #}\n  y",
     NULL,
     "  x\n  y"},
    {"ws",
     "{% for i in [1, 2] %}\n  {{ i }}\n{% endfor %}\n",
     NULL,
     "  1\n  2\n"},
    {"ws",
     "a\r\nb\r{% if true %}\r\nc{% endif %}\r\n",
     NULL,
     "a\nb\nc"},
    {"ws",
     "trailing\n\n",
     NULL,
     "trailing\n"},
    {"ws",
     "x {%- raw -%}  {{ y }}  {%- endraw -%} z",
     NULL,
     "x{{ y }}z"},
    {"ws",
     "   {% raw %}  {% if %}  {% endraw %}\n  b",
     NULL,
     "  {% if %}    b"},
    {"if",
     "{% if n == 1 %}one{% elif n == 3 %}three{% else %}other{% endif %}{% if no %}x{% else %}y{% endif %}",
     NULL,
     "threey"},
    {"for",
     "{% for i in l %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ i }},{% endfor %}",
     NULL,
     "1032TrueFalse33,2121FalseFalse31,3210FalseTrue32,"},
    {"for",
     "{% for i in l if i > 1 %}{{ i }}:{{ loop.index }}/{{ loop.length }} {% else %}none{% endfor %}|{% for i in [] %}x{% else %}empty{% endfor %}",
     NULL,
     "3:1/2 2:2/2 |empty"},
    {"for",
     "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}{% for c in 'ab' %}{{ c }}{% endfor %}",
     NULL,
     "b=2;a=1;baab"},
    {"for",
     "{% for a, (b, c) in [(1, (2, 3))] %}{{ a }}{{ b }}{{ c }}{% endfor %}{% for x in undefined_name %}x{% endfor %}",
     NULL,
     "123"},
    {"for",
     "{% for i in range(6) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 4 %}{% break %}{% endif %}{{ i }}{% endfor %}",
     NULL,
     "023"},
    {"for",
     "{% for x in 'abc' %}{{ loop.cycle('o', 'e') }}{{ loop.previtem }}{{ loop.nextitem }};{% endfor %}",
     NULL,
     "ob;eac;ob;"},
    {"for",
     "{% for i in range(2) %}{% set outer = loop %}{% for j in range(2) %}{{ outer.index }}{{ loop.index }} {% endfor %}{% endfor %}",
     NULL,
     "11 12 21 22 "},
    {"for",
     "{% for x in [1, 1, 2] %}{{ loop.changed(x) }}{% endfor %}",
     NULL,
     "TrueFalseTrue"},
    {"for",
     "{% for x in xs recursive %}{{ x.n }}{% if x.c %}({{ loop(x.c) }}){% endif %}{% endfor %}",
     "{\"xs\": [{\"n\": 1, \"c\": [{\"n\": 2}, {\"n\": 3, \"c\": [{\"n\": 4}]}]}]}",
     "1(23(4))"},
    {"for",
     "{{ range(3)|list }}{{ range(1, 7, 2)|list }}{{ range(5, 0, -2)|list }}",
     NULL,
     "[0, 1, 2][1, 3, 5][5, 3, 1]"},
    {"set",
     "{% set x = 1 %}{% set a, b = 2, 3 %}{{ x }}{{ a }}{{ b }}{% set t = 1, 2 %}{{ t }}",
     NULL,
     "123(1, 2)"},
    {"set",
     "{% set c = 0 %}{% for i in range(3) %}{% set c = c + 1 %}{{ c }}{% endfor %}{{ c }}",
     NULL,
     "1110"},
    {"set",
     "{% set x = 1 %}{% if true %}{% set x = 2 %}{% endif %}{{ x }}",
     NULL,
     "2"},
    {"set",
     "{% set ns = namespace(total=0, items=[]) %}{% for i in range(4) %}{% set ns.total = ns.total + i %}{% set ns.items = ns.items + [i] %}{% endfor %}{{ ns.total }}{{ ns.items }}{% set ns.new = 'n' %}{{ ns.new }}",
     NULL,
     "6[0, 1, 2, 3]n"},
    {"set",
     "{% set x %}block {{ 1 + 1 }}{% endset %}[{{ x }}]{% set y | upper %}up{% endset %}{{ y }}",
     NULL,
     "[block 2]UP"},
    {"set",
     "{% with a = 1, b = 2 %}{{ a + b }}{% endwith %}{{ a }}|",
     NULL,
     "3|"},
    {"set",
     "{% set l2 = l %}{% set l3 = l2 + [4] %}{% set l4 = l2 + [5] %}{{ l }}{{ l3 }}{{ l4 }}",
     NULL,
     "[3, 1, 2][3, 1, 2, 4][3, 1, 2, 5]"},
    {"macro",
     "{% macro f(a, b=2) %}{{ a }}-{{ b }}{% endmacro %}{{ f(1) }}|{{ f(1, 3) }}|{{ f(b=5, a=0) }}|{{ f() }}|",
     NULL,
     "1-2|1-3|0-5|-2|"},
    {"macro",
     "{% macro f() %}{{ varargs }}{{ kwargs }}{% endmacro %}{{ f(1, 2, x=3) }}",
     NULL,
     "(1, 2){'x': 3}"},
    {"macro",
     "{% macro w(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call w('b') %}inner {{ n }}{% endcall %}",
     NULL,
     "<b>inner 3</b>"},
    {"macro",
     "{% macro m(v) %}[{{ caller(v * 2) }}]{% endmacro %}{% call(x) m(3) %}got {{ x }}{% endcall %}",
     NULL,
     "[got 6]"},
    {"macro",
     "{% set x = 1 %}{% macro m() %}{{ x }}{% set y = 5 %}{% endmacro %}{% set x = 2 %}{{ m() }}{{ y }}|",
     NULL,
     "2|"},
    {"macro",
     "{%- macro render(c) -%}\n  {%- if c is string -%}{{ c }}{%- else -%}{%- for b in c -%}{{ b.text }}{%- endfor -%}{%- endif -%}\n{%- endmacro -%}\n{{ render('s') }}|{{ render([{'text': 'a'}, {'text': 'b'}]) }}",
     NULL,
     "s|ab"},
    {"block",
     "{% filter upper %}hello {{ 'x' }}{% endfilter %}{% filter trim|title %}  a b  {% endfilter %}",
     NULL,
     "HELLO XA B"},
    {"block",
     "{% raw %}{{ not evaluated }}{% endraw %}{# a comment #}",
     NULL,
     "{{ not evaluated }}"},
    {"block",
     "{%- generation -%} gen {{ 1 }} {%- endgeneration -%}",
     NULL,
     "gen 1"},
    {"tests",
     "{{ no is none }}{{ x is defined }}{{ x is undefined }}{{ n is number }}{{ t is number }}{{ t is integer }}{{ n is integer }}{{ f is float }}{{ s is string }}{{ d is mapping }}{{ l is iterable }}{{ s is iterable }}{{ d is sequence }}{{ n is sequence }}",
     NULL,
     "TrueFalseTrueTrueTrueFalseTrueTrueTrueTrueTrueTrueTrueFalse"},
    {"tests",
     "{{ 3 is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ 9 is divisibleby(4) }}{{ 1 is eq 1 }}{{ 1 is equalto 1.0 }}{{ 1 is ne 2 }}{{ 1 is lt 2 }}{{ 2 is ge 2 }}{{ 3 is gt 2 }}{{ 2 is le 1 }}{{ 2 is greaterthan 1 }}{{ 1 is lessthan 1 }}",
     NULL,
     "TrueTrueTrueFalseTrueTrueTrueTrueTrueTrueFalseTrueFalse"},
    {"tests",
     "{{ t is true }}{{ t is false }}{{ t is boolean }}{{ 1 is boolean }}{{ 'a' is in 'abc' }}{{ 'ab' is lower }}{{ 'AB' is upper }}{{ no is sameas none }}{{ 'upper' is filter }}{{ 'odd' is test }}{{ range is callable }}{{ s is not string }}",
     NULL,
     "TrueFalseTrueFalseTrueTrueTrueTrueTrueTrueTrueFalse"},
    {"filters",
     "{{ '  x  '|trim }}|{{ 'xxaxx'|trim('x') }}|{{ 'Hello'|lower }}|{{ 'hello'|upper }}|{{ 'hELLO wORLD'|capitalize }}|{{ 'hello big-world (x)'|title }}|{{ \"it's\"|title }}",
     NULL,
     "x|a|hello|HELLO|Hello world|Hello Big-World (X)|It's"},
    {"filters",
     "{{ l|length }}{{ s|length }}{{ d|length }}{{ '\xc3\xa9'|length }}{{ undefined_name|length }}{{ l|count }}",
     NULL,
     "3122103"},
    {"filters",
     "{{ l|join(', ') }}|{{ l|join }}|{{ messages|join('/', attribute='role') }}|{{ l|first }}{{ l|last }}{{ s|first }}{{ []|first }}|",
     NULL,
     "3, 1, 2|312|system/user/assistant|32H|"},
    {"filters",
     "{{ x|default('d') }}|{{ no|default('d') }}|{{ ''|default('d', true) }}|{{ x|d('z') }}|{{ 0|d('z', boolean=true) }}",
     NULL,
     "d|None|d|z|z"},
    {"filters",
     "{{ l|sort }}{{ l|sort(reverse=true) }}{{ ['b', 'A', 'a']|sort }}{{ ['b', 'A', 'a']|sort(case_sensitive=true) }}{{ messages|sort(attribute='role')|map(attribute='role')|list }}",
     NULL,
     "[1, 2, 3][3, 2, 1]['A', 'a', 'b']['A', 'a', 'b']['assistant', 'system', 'user']"},
    {"filters",
     "{{ [1, 2, 1, 3]|unique|list }}{{ ['a', 'A']|unique|list }}{{ l|reverse|list }}{{ s|reverse }}{{ l|min }}{{ l|max }}{{ l|sum }}{{ messages|sum(attribute='content', start='') if false else '' }}",
     NULL,
     "[1, 2, 3]['a'][2, 1, 3]dlroW ,olleH136"},
    {"filters",
     "{{ messages|map(attribute='role')|list }}{{ l|map('string')|join('-') }}{{ ['1', '2']|map('int')|sum }}{{ messages|map(attribute='x', default='D')|list }}",
     NULL,
     "['system', 'user', 'assistant']3-1-23['D', 'D', 'D']"},
    {"filters",
     "{{ messages|selectattr('role', 'equalto', 'user')|list|length }}{{ messages|rejectattr('role', 'eq', 'user')|map(attribute='role')|list }}{{ messages|selectattr('tool_calls')|list|length }}{{ messages|selectattr('tool_calls', 'defined')|map(attribute='role')|first }}",
     NULL,
     "1['system', 'assistant']1assistant"},
    {"filters",
     "{{ [1, none, 2]|select|list }}{{ [1, 2, 3, 4]|select('odd')|list }}{{ [1, 2, 3, 4]|reject('divisibleby', 2)|list }}{{ [1, 2, 3]|select('gt', 1)|list }}{{ no|select|list }}",
     NULL,
     "[1, 2][1, 3][1, 3][2, 3][]"},
    {"filters",
     "{{ d|items|list }}{{ d|dictsort }}{{ d|dictsort(by='value', reverse=true) }}{{ undefined_name|items|list }}",
     NULL,
     "[('b', 2), ('a', 1)][('a', 1), ('b', 2)][('b', 2), ('a', 1)][]"},
    {"filters",
     "{{ '22'|int }} {{ '3.7'|int }} {{ 'x'|int }} {{ 'x'|int(7) }} {{ '0x1A'|int(base=16) }} {{ ' 42 '|int }} {{ '2.5'|float }} {{ 'x'|float }} {{ 3|float }} {{ 1.9|int }}",
     NULL,
     "22 3 0 7 26 42 2.5 0.0 3.0 1"},
    {"filters",
     "{{ 2.5|round }} {{ 3.5|round }} {{ 3.14159|round(2) }} {{ 2.675|round(2) }} {{ 2.1|round(0, 'ceil') }} {{ 2.9|round(0, 'floor') }} {{ 35|round(-1) }} {{ -3|abs }} {{ -2.5|abs }}",
     NULL,
     "2.0 4.0 3.14 2.67 3.0 2.0 40 3 2.5"},
    {"filters",
     "{{ 5|string + 'x' }}{{ 5.0|string }}{{ t|string }}{{ no|string }}{{ l|string }}{{ 'ab'|list }}{{ d|list }}",
     NULL,
     "5x5.0TrueNone[3, 1, 2]['a', 'b']['b', 'a']"},
    {"filters",
     "{{ 'a\\nb'|indent(2) }}|{{ 'a\\nb'|indent(2, true) }}|{{ 'a\\n\\nb'|indent(2, blank=true) }}|{{ 'a\\nb'|indent('> ') }}",
     NULL,
     "a\n  b|  a\n  b|a\n  \n  b|a\n> b"},
    {"filters",
     "{{ 'abc'|center(9) }}|{{ 'hello world foo'|wordcount }}|{{ 'a-b c_d \xc3\xa9'|wordcount }}|{{ 'aaa'|replace('a', 'b', 2) }}|{{ 'hello'|replace('l', 'L') }}",
     NULL,
     "   abc   |3|4|bba|heLLo"},
    {"filters",
     "{{ 'hello world foo bar baz qux quux corge'|truncate(20) }}|{{ 'abcdef'|truncate(3, true, '') }}|{{ 'short'|truncate(10) }}",
     NULL,
     "hello world foo...|abcdef|short"},
    {"filters",
     "{{ range(5)|batch(2)|list }}{{ range(5)|batch(2, 'x')|list }}{{ range(7)|slice(3)|list }}{{ '%s-%s'|format(1, 'a') }}",
     NULL,
     "[[0, 1], [2, 3], [4]][[0, 1], [2, 3], [4, 'x']][[0, 1, 2], [3, 4], [5, 6]]1-a"},
    {"filters",
     "{{ '<b>\"&\\'</b>'|e }}|{{ '<x>'|escape }}|{{ '<x>'|safe }}|{{ ('<a>'|safe) + '<b>' }}|{{ '<a>' + ('<b>'|safe) }}|{{ ('<a>'|safe) ~ '<b>' }}|{{ ('<x>'|safe)|e }}|{{ '<x>'|forceescape }}",
     NULL,
     "&lt;b&gt;&#34;&amp;&#39;&lt;/b&gt;|&lt;x&gt;|<x>|<a>&lt;b&gt;|&lt;a&gt;<b>|<a><b>|<x>|&lt;x&gt;"},
    {"tojson",
     "{{ {'a': 1, 'b': [1, 2.5, 'x\"y', none, true, false], 'c': {}}|tojson }}",
     NULL,
     "{\"a\": 1, \"b\": [1, 2.5, \"x\\\"y\", null, true, false], \"c\": {}}"},
    {"tojson",
     "{{ messages[2].tool_calls[0].function|tojson(indent=4) }}",
     NULL,
     "{\n    \"name\": \"f\",\n    \"arguments\": {\n        \"a\": 1,\n        \"b\": [\n            1.5,\n            null,\n            true\n        ]\n    }\n}"},
    {"tojson",
     "{{ d|tojson(sort_keys=true) }}{{ '\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80'|tojson }}{{ '\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80'|tojson(ensure_ascii=true) }}{{ [1, [2]]|tojson(separators=(',', ':')) }}{{ 'a\\u2028\\x01\\t\\\\/'|tojson }}",
     NULL,
     "{\"a\": 1, \"b\": 2}\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"\"\\u00e9\\u20ac\\ud83d\\ude00\"[1,[2]]\"a\xe2\x80\xa8\\u0001\\t\\\\/\""},
    {"tojson",
     "{{ 3.0|tojson }}{{ (1, 2)|tojson }}{{ {1: 'a', none: 'b', true: 'c'}|tojson }}{{ [1, {'a': []}]|tojson(indent=2) }}{{ no|tojson }}{{ 'x'|tojson(indent='\\t') }}",
     NULL,
     "3.0[1, 2]{\"1\": \"c\", \"null\": \"b\"}[\n  1,\n  {\n    \"a\": []\n  }\n]null\"x\""},
    {"methods",
     "{{ s.upper() }}{{ s.lower() }}{{ s.title() }}{{ 'hello'.capitalize() }}{{ 'aBc'.swapcase() }}{{ s.startswith('Hell') }}{{ s.endswith(('x', 'd')) }}{{ s.startswith('W', 7) }}",
     NULL,
     "HELLO, WORLDhello, worldHello, WorldHelloAbCTrueTrueTrue"},
    {"methods",
     "{{ '  a  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '\\n\\na\\n'.lstrip('\\n') }}|{{ 'a\\n\\n'.rstrip() }}|{{ s.replace('l', 'L') }}|{{ s.replace('l', 'L', 1) }}",
     NULL,
     "a|a|a\n|a|HeLLo, WorLd|HeLlo, World"},
    {"methods",
     "{{ 'a,b,,c'.split(',') }}{{ ' a  b '.split() }}{{ 'a b c'.split(' ', 1) }}{{ 'a,b,c'.rsplit(',', 1) }}{{ '  a b  c '.split(None, 1) }}{{ ''.split(',') }}{{ 'x\\ny\\r\\nz'.splitlines() }}",
     NULL,
     "['a', 'b', '', 'c']['a', 'b']['a', 'b c']['a,b', 'c']['a', 'b  c ']['']['x', 'y', 'z']"},
    {"methods",
     "{{ s.find('o') }}{{ s.rfind('o') }}{{ s.find('z') }}{{ s.count('l') }}{{ s.index('W') }}{{ '\xc3\xa9-\xc3\xa9'.find('-') }}{{ ', '.join(['a', 'b']) }}{{ 'a-b'.partition('-') }}{{ 'a-b-c'.rpartition('-') }}",
     NULL,
     "48-1371a, b('a', '-', 'b')('a-b', '-', 'c')"},
    {"methods",
     "{{ 'x'.ljust(3, '*') }}|{{ 'x'.rjust(3) }}|{{ 'x'.center(4, '-') }}|{{ '42'.zfill(5) }}|{{ '-4'.zfill(4) }}|{{ '12'.isdigit() }}{{ 'ab'.isalpha() }}{{ ' '.isspace() }}{{ 'Ab'.istitle() }}|{{ 'pre_x'.removeprefix('pre_') }}",
     NULL,
     "x**|  x|-x--|00042|-004|TrueTrueTrueTrue|x"},
    {"methods",
     "{{ '{} and {}'.format(1, 'b') }}|{{ '{0}{1}{0}'.format('a', 'b') }}|{{ '{x}!'.format(x=5) }}|{{ '{:>6.2f}|{:<4}|{:^5}|{:03d}|{:+d}|{:x}|{!r}'.format(3.14159, 'ab', 'c', 7, 5, 255, 'q') }}",
     NULL,
     "1 and b|aba|5!|  3.14|ab  |  c  |007|+5|ff|'q'"},
    {"methods",
     "{{ l.index(1) }}{{ l.count(3) }}{{ l.copy() }}{{ d.copy() }}",
     NULL,
     "11[3, 1, 2]{'b': 2, 'a': 1}"},
    {"globals",
     "{{ namespace(a=1).a }}{{ namespace({'b': 2}).b }}{{ dict(a=1, b=2) }}{{ dict([('x', 1)], y=2) }}{{ strftime_now('%Y-%m-%d %H:%M %b %a') }}",
     NULL,
     "12{'a': 1, 'b': 2}{'x': 1, 'y': 2}2026-11-25 12:00 Nov Wed"},
    {"lazy",
     "{% set g = l|map('string') %}{% for x in g %}{{ x }}{% endfor %}|{% for x in g %}{{ x }}{% endfor %}|{{ [1]|map('string') is iterable }}{{ [1]|map('string') is sequence }}",
     NULL,
     "312||TrueFalse"},
    {"lazy",
     "{% if []|select %}generator is true{% endif %}|{{ (l|select)[0] }}|{{ 1.5|reject('none') is defined }}|{{ no|map('upper')|list }}",
     NULL,
     "generator is true||True|[]"},
    {"unicode",
     "{{ '\xc3\x9cn\xc3\xaf""c\xc3\xb6""d\xc3\xa9'.upper() }}{{ '\xc3\x80\xc3\x89'.lower() }}{{ 'stra\xc3\x9f""e'.upper() }}{{ '\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e'|length }}{{ '\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e'|reverse }}{{ '\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e'|list }}{{ '\xef\xac\x81ne'.title() }}",
     NULL,
     "\xc3\x9cN\xc3\x8f""C\xc3\x96""D\xc3\x89\xc3\xa0\xc3\xa9STRASSE3\xe8\xaa\x9e\xe6\x9c\xac\xe6\x97\xa5['\xe6\x97\xa5', '\xe6\x9c\xac', '\xe8\xaa\x9e']Fine"},

};

/* Renders src with the base context (plus extra); returns the text or NULL with the error in *err. */
static char *render(const char *src, const char *extra, const struct loom_jinja_limits *lim, size_t *len)
{
    json_t *ctx = json_loads(base_ctx, 0, NULL);
    if (extra) {
        json_t *e = json_loads(extra, 0, NULL);
        json_object_update(ctx, e);
        json_decref(e);
    }
    struct loom_jinja_template *t;
    char *out = NULL;
    size_t n = 0;
    if (loom_jinja_parse(src, strlen(src), NULL, &t) == 0) {
        if (loom_jinja_render(t, ctx, NOW, lim, &out, &n)) out = NULL;
        loom_jinja_free(t);
    }
    json_decref(ctx);
    if (len) *len = n;
    return out;
}

/* Expects an error whose message holds `want` (and `want2` when not NULL). */
static void expect_error(const char *src, const char *want, const char *want2)
{
    char *out = render(src, NULL, NULL, NULL);
    CHECK_MSG(out == NULL, "expected an error for %.60s, got \"%.80s\"", src, out ? out : "");
    if (!out) {
        const char *m = loom_last_error();
        CHECK_MSG(strstr(m, want) != NULL, "error for %.60s: \"%s\" lacks \"%s\"", src, m, want);
        if (want2) CHECK_MSG(strstr(m, want2) != NULL, "error for %.60s: \"%s\" lacks \"%s\"", src, m, want2);
    }
    free(out);
}

static void expect_text(const char *src, const char *want)
{
    char *out = render(src, NULL, NULL, NULL);
    CHECK_MSG(out && !strcmp(out, want), "%.70s: got \"%.200s\" (%s), want \"%.200s\"", src, out ? out : "",
              out ? "" : loom_last_error(), want);
    free(out);
}

static char *repeat(const char *a, int n, const char *mid, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), lm = strlen(mid);
    char *s = malloc(la * (size_t)n + lm + lb * (size_t)n + 1);
    char *p = s;
    for (int i = 0; i < n; i++, p += la) memcpy(p, a, la);
    memcpy(p, mid, lm);
    p += lm;
    for (int i = 0; i < n; i++, p += lb) memcpy(p, b, lb);
    *p = 0;
    return s;
}

static void test_features(void)
{
    int failed_before = test_failed;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n;
        char *out = render(cases[i].src, cases[i].ctx, NULL, &n);
        bool ok = out && n == strlen(cases[i].want) && !memcmp(out, cases[i].want, n);
        CHECK_MSG(ok, "[%s] %s\n    got:  %s%s\n    want: %s", cases[i].group, cases[i].src, out ? out : "ERROR ",
                  out ? "" : loom_last_error(), cases[i].want);
        free(out);
    }
    printf("features: %zu cases, %d failed\n", sizeof cases / sizeof cases[0], test_failed - failed_before);
}

static void test_options(void)
{
    /* jinja2's own defaults (no trim_blocks, no lstrip_blocks), and keep_trailing_newline */
    struct loom_jinja_options o = {false, false, false};
    struct loom_jinja_template *t;
    const char *src = "a\n  {% if true %}\n  b\n  {% endif %}\nc\n";
    CHECK(loom_jinja_parse(src, strlen(src), &o, &t) == 0);
    char *out;
    CHECK(loom_jinja_render(t, NULL, 0, NULL, &out, NULL) == 0);
    CHECK_EQ_STR(out, "a\n  \n  b\n  \nc");
    free(out);
    loom_jinja_free(t);
    o.keep_trailing_newline = true;
    o.trim_blocks = true;
    CHECK(loom_jinja_parse(src, strlen(src), &o, &t) == 0);
    CHECK(loom_jinja_render(t, NULL, 0, NULL, &out, NULL) == 0);
    CHECK_EQ_STR(out, "a\n    b\n  c\n");
    free(out);
    loom_jinja_free(t);
    /* render_string: transformers' options */
    size_t n;
    CHECK(loom_jinja_render_string("  {% if true %}\nx{% endif %}\n", NULL, &out, &n) == 0);
    CHECK_EQ_STR(out, "x");
    free(out);
}

static void test_errors(void)
{
    /* syntax errors name the line */
    expect_error("line 1\nline 2\n{% if %}", "line 3", NULL);
    expect_error("a\n{% for x in y %}\nno end", "endfor", "line 3");
    expect_error("{% endif %}", "endif", "line 1");
    expect_error("x\n\n\n{{ 1 + }}", "line 4", NULL);
    expect_error("{{ 'abc }}", "line 1", NULL);
    expect_error("{# never closed", "comment", NULL);
    expect_error("{% raw %}never closed", "raw", NULL);
    expect_error("{{ (1 }}", "line 1", NULL);
    expect_error("{{ [1)] }}", "unexpected ')'", NULL);
    expect_error("{% frobnicate %}", "unknown tag 'frobnicate'", NULL);
    expect_error("{{ x|nosuchfilter }}", "No filter named 'nosuchfilter'", NULL);
    expect_error("{{ x is nosuchtest }}", "No test named 'nosuchtest'", NULL);
    expect_error("{% break %}", "outside loop", NULL);
    expect_error("{% include 'x' %}", "not supported", NULL);
    /* an unknown filter inside an if fails only when it runs (jinja2 3) */
    expect_text("{% if false %}{{ x|nosuchfilter }}{% endif %}ok", "ok");
    expect_error("{% if true %}{{ x|nosuchfilter }}{% endif %}", "No filter named", NULL);
    /* raise_exception: the template's message, and the line */
    expect_error("a\n{{ raise_exception('Conversation roles must alternate') }}", "Conversation roles must alternate",
                 "line 2");
    /* runtime errors name the line */
    expect_error("a\n\n{{ 1 / 0 }}", "division by zero", "line 3");
    expect_error("{{ x.y.z }}", "'x' is undefined", NULL);
    expect_error("{{ messages[5].content }}", "no element 5", NULL);
    expect_error("{{ 'a' + 1 }}", "unsupported operand", NULL);
    expect_error("{{ 'a' < 1 }}", "not supported between", NULL);
    expect_error("{{ undefined_name + 1 }}", "undefined", NULL);
    expect_error("{{ undefined_name() }}", "undefined", NULL);
    expect_error("{{ n() }}", "not callable", NULL);
    expect_error("{% set a, b = [1] %}", "not enough values to unpack", NULL);
    expect_error("{% set q = 1 %}{% set q.x = 1 %}", "non-namespace", NULL);
    expect_error("{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}", "takes not more than 1", NULL);
    expect_error("{% macro m(a) %}{% endmacro %}{{ m(b=1) }}", "no keyword argument 'b'", NULL);
    expect_error("{{ none|tojson }}{{ undefined_name|tojson }}", "not JSON serializable", NULL);
    expect_error("{% for x in 5 %}{% endfor %}", "not iterable", NULL);
    expect_error("{{ (1.5|reject('none'))|list }}", "not iterable", NULL);
    /* the sandbox: no mutation, no private attributes */
    expect_error("{{ l.append(4) }}", "unsafe", NULL);
    expect_error("{{ d.update({}) }}", "unsafe", NULL);
    expect_error("{{ s.__class__() }}", "unsafe", NULL);
    expect_text("{{ s.__class__ }}|{{ l.append is defined }}", "|False");
}

static void test_limits(void)
{
    /* 10,000 nested ifs, brackets, parentheses, filters: an error, no stack overflow */
    char *s = repeat("{% if true %}", 10000, "x", "{% endif %}");
    expect_error(s, "nested too deeply", NULL);
    free(s);
    s = repeat("[", 10000, "1", "]");
    char *t = malloc(strlen(s) + 16);
    sprintf(t, "{{ %s }}", s);
    expect_error(t, "nested too deeply", NULL);
    free(s);
    free(t);
    s = repeat("(", 10000, "1", ")");
    t = malloc(strlen(s) + 16);
    sprintf(t, "{{ %s }}", s);
    expect_error(t, "nested too deeply", NULL);
    free(s);
    free(t);
    s = repeat("{% for x in l %}", 5000, "", "{% endfor %}");
    expect_error(s, "nested too deeply", NULL);
    free(s);
    /* long flat chains parse, and run into the evaluation depth limit */
    s = repeat("1 + ", 100000, "1", "");
    t = malloc(strlen(s) + 16);
    sprintf(t, "{{ %s }}", s);
    expect_error(t, "nested too deeply", NULL);
    free(s);
    free(t);
    s = repeat("|trim", 100000, "", "");
    t = malloc(strlen(s) + 16);
    sprintf(t, "{{ s%s }}", s);
    expect_error(t, "nested too deeply", NULL);
    free(s);
    free(t);
    s = repeat("|trim", 100000, "", "");
    t = malloc(strlen(s) + 64);
    sprintf(t, "{%% filter upper%s %%}x{%% endfilter %%}", s);
    expect_error(t, "nested too deeply", NULL);
    free(t);
    t = malloc(strlen(s) + 64);
    sprintf(t, "{%% set v | upper%s %%}x{%% endset %%}", s);
    expect_error(t, "nested too deeply", NULL);
    free(s);
    free(t);
    s = repeat("not ", 10000, "1", "");
    t = malloc(strlen(s) + 16);
    sprintf(t, "{{ %s }}", s);
    expect_error(t, "nested too deeply", NULL);
    free(s);
    free(t);
    /* recursion */
    expect_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "nested too deeply", NULL);
    expect_error("{% for x in [1] recursive %}{{ loop([x]) }}{% endfor %}", "nested too deeply", NULL);
    /* runaway loops, output and memory */
    expect_error("{% for i in range(1000000) %}{% endfor %}", "Range too big", NULL);
    expect_error("{% set r = range(100000) %}{% for i in r %}{% for j in r %}{% for k in r %}{% endfor %}{% endfor %}"
                 "{% endfor %}", "too long", NULL);
    expect_error("{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}", "limit", NULL);
    expect_error("{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}", "larger than the limit", NULL);
    expect_error("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
                 "limit", NULL);
    expect_error("{{ 'x' * 10000000000 }}", "too long", NULL);
    expect_error("{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}",
                 "limit", NULL);
    /* a namespace holding itself prints like Python's recursive repr */
    expect_text("{% set ns = namespace() %}{% set ns.me = [ns] %}{{ ns }}", "<Namespace {'me': [<Namespace {...}>]}>");
    expect_error("{% set ns = namespace() %}{% set ns.me = [ns] %}{{ ns.me|tojson }}", "not JSON serializable", NULL);
    /* limits from the caller */
    struct loom_jinja_limits lim = {.max_output = 10};
    size_t n;
    char *out = render("{{ 'x' * 11 }}", NULL, &lim, &n);
    CHECK(out == NULL && strstr(loom_last_error(), "larger than the limit"));
    free(out);
    out = render("{{ 'x' * 10 }}", NULL, &lim, &n);
    CHECK(out && n == 10);
    free(out);
}

static void test_big_and_bad_data(void)
{
    /* a 1 MB string through the usual operations */
    size_t big = 1 << 20;
    char *mb = malloc(big + 1);
    for (size_t i = 0; i < big; i++) mb[i] = "abcdefgh  "[i % 10];
    mb[big] = 0;
    json_t *ctx = json_pack("{s:s}", "big", mb);
    const char *src = "{{ big|length }}|{{ big[::-1]|length }}|{{ big.split(' ')|length }}|{{ (big ~ big)|length }}|"
                      "{{ big|upper|length }}|{{ big.replace('a', 'bb')|length }}|{{ big[-3:] }}|{{ big|tojson|length }}";
    struct loom_jinja_template *t;
    CHECK(loom_jinja_parse(src, strlen(src), NULL, &t) == 0);
    char *out = NULL;
    int rc = loom_jinja_render(t, ctx, NOW, NULL, &out, NULL);
    CHECK_MSG(rc == 0, "%s", loom_last_error());
    /* 1048576 chars: 104857 full "abcdefgh  " cycles + "abcdef" */
    CHECK_EQ_STR(out, "1048576|1048576|209715|2097152|1048576|1153434|def|1048578");
    free(out);
    loom_jinja_free(t);
    /* a 1 MB template: data in, data out */
    src = "{{ big }}";
    CHECK(loom_jinja_parse(src, strlen(src), NULL, &t) == 0);
    size_t n = 0;
    CHECK(loom_jinja_render(t, ctx, NOW, NULL, &out, &n) == 0);
    CHECK(out && n == big && !memcmp(out, mb, big));
    free(out);
    loom_jinja_free(t);
    CHECK(loom_jinja_parse(mb, big, NULL, &t) == 0);
    CHECK(loom_jinja_render(t, NULL, NOW, NULL, &out, &n) == 0);
    CHECK(out && n == big && !memcmp(out, mb, big));
    free(out);
    loom_jinja_free(t);
    json_decref(ctx);
    free(mb);

    /* invalid UTF-8: in the template an error, in the data an error (never a crash) */
    CHECK(loom_jinja_parse("ab\xff{{ 1 }}", 9, NULL, &t) == LOOM_EINVAL);
    CHECK(strstr(loom_last_error(), "UTF-8") != NULL);
    CHECK(loom_jinja_parse("{{ '\xc3' }}", 8, NULL, &t) == LOOM_EINVAL);
    ctx = json_object();
    json_object_set_new(ctx, "bad", json_stringn_nocheck("a\xff\xfe\xc3", 4));
    src = "{{ bad }}|{{ bad|length }}|{{ bad[1] }}|{{ bad|tojson }}|{{ bad.upper() }}|{{ bad[::-1] }}";
    CHECK(loom_jinja_parse(src, strlen(src), NULL, &t) == 0);
    rc = loom_jinja_render(t, ctx, NOW, NULL, &out, NULL);
    CHECK(rc == LOOM_EINVAL && strstr(loom_last_error(), "UTF-8"));
    loom_jinja_free(t);
    json_decref(ctx);
    /* NUL bytes in data pass through */
    ctx = json_object();
    json_object_set_new(ctx, "z", json_stringn("a\0b", 3));
    src = "{{ z }}|{{ z|length }}|{{ z|tojson }}";
    CHECK(loom_jinja_parse(src, strlen(src), NULL, &t) == 0);
    CHECK(loom_jinja_render(t, ctx, NOW, NULL, &out, &n) == 0);
    CHECK(n == 16 && !memcmp(out, "a\0b|3|\"a\\u0000b\"", 16));
    free(out);
    loom_jinja_free(t);
    json_decref(ctx);
    /* deeply nested data */
    json_t *deep = json_array(), *cur = deep;
    for (int i = 0; i < 5000; i++) {
        json_t *x = json_array();
        json_array_append_new(cur, x);
        cur = x;
    }
    ctx = json_pack("{s:o}", "deep", deep);
    src = "{{ deep|length }}";
    CHECK(loom_jinja_parse(src, strlen(src), NULL, &t) == 0);
    CHECK(loom_jinja_render(t, ctx, NOW, NULL, &out, NULL) == LOOM_EINVAL);
    CHECK(strstr(loom_last_error(), "nested too deeply") != NULL);
    loom_jinja_free(t);
    json_decref(ctx);
    /* vars must be an object */
    json_t *arr = json_array();
    CHECK(loom_jinja_parse("x", 1, NULL, &t) == 0);
    CHECK(loom_jinja_render(t, arr, 0, NULL, &out, NULL) == LOOM_EINVAL);
    loom_jinja_free(t);
    json_decref(arr);
}

int main(void)
{
    setenv("TZ", "UTC", 1);
    tzset();
    test_features();
    test_options();
    test_errors();
    test_limits();
    test_big_and_bad_data();
    return test_report();
}
