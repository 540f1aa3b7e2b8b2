import neostandard from 'neostandard'

export default neostandard({ ts: true, ignores: ['dist/**', 'migrations/**', '.tap/**', '.data/**'] })
