import { ApiError } from '../core/api';
import type { Route } from '../core/router';
import type { App, Screen } from './app';
import { h } from './dom';

export class LoginScreen implements Screen {
  constructor(
    private readonly app: App,
    private readonly route: Extract<Route, { name: 'login' }>,
  ) {}

  mount(root: HTMLElement): void {
    const user = h('input', { name: 'username', autocomplete: 'username', required: true, autofocus: true });
    const pass = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
    const error = h('p', { class: 'form-error', role: 'alert' });
    const submit = h('button', { class: 'btn btn-primary btn-block', type: 'submit' }, 'Sign in');
    const form = h(
      'form',
      {
        class: 'card login-card',
        onsubmit: async (e: Event) => {
          e.preventDefault();
          error.textContent = '';
          submit.disabled = true;
          submit.textContent = 'Signing in…';
          try {
            await this.app.api.login(user.value.trim(), pass.value);
            this.app.user = await this.app.api.me().catch(() => null);
            this.app.navigate(this.route.next && this.route.next.startsWith('#/') && !this.route.next.startsWith('#/login') ? this.route.next : '#/projects');
          } catch (err) {
            const ae = err instanceof ApiError ? err : null;
            error.textContent =
              ae?.status === 429
                ? 'Too many attempts. Please wait a minute before trying again.'
                : ae?.status === 400 || ae?.status === 401 || ae?.status === 403
                  ? ae.detail && !/^(Invalid request|Not signed in|Permission denied)$/.test(ae.detail)
                    ? ae.detail
                    : 'Wrong username or password.'
                  : ae?.isNetwork
                    ? 'The server cannot be reached. Check your connection.'
                    : (ae?.detail ?? 'Sign-in failed.');
            pass.select();
          } finally {
            submit.disabled = false;
            submit.textContent = 'Sign in';
          }
        },
      },
      h('div', { class: 'login-brand' }, h('span', { class: 'brand-mark big' }), h('div', null, h('h1', null, 'CellContour'), h('p', { class: 'muted' }, 'Cytology cell annotation'))),
      h('label', { class: 'field' }, h('span', null, 'Username'), user),
      h('label', { class: 'field' }, h('span', null, 'Password'), pass),
      error,
      submit,
    );
    root.append(h('div', { class: 'center-page login-page' }, form));
  }

  unmount(): void {}
}
