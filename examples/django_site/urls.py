from django.contrib.auth import views as auth_views
from django.urls import path

from examples.django_site import views

urlpatterns = [
    path("", views.home, name="home"),
    path("notes", views.add_note, name="notes"),
    path("expiry", views.expiry, name="expiry"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
]
